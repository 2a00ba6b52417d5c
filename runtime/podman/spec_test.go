package podman

import (
	"reflect"
	"strings"
	"testing"

	"github.com/containers/podman/v5/libpod/define"
	"github.com/containers/podman/v5/pkg/specgen"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }
func TestResources(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   policy.Limits
		want *specs.LinuxResources
	}{
		{"none", policy.Limits{}, nil},
		{"only non-resource limits", policy.Limits{NoFile: 10, Disk: 1 << 30, Timeout: policy.Duration(1e9)}, nil},
		{"memory caps swap too", policy.Limits{Memory: 256 << 20},
			&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(256 << 20), Swap: i64(256 << 20)}}},
		{"half a cpu", policy.Limits{CPUs: 0.5},
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000), Shares: u64(1024)}}},
		{"two cpus", policy.Limits{CPUs: 2},
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(200000), Period: u64(100000), Shares: u64(1024)}}},
		{"tiny cpu share clamps to the kernel minimum", policy.Limits{CPUs: 0.001},
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(1000), Period: u64(100000), Shares: u64(1024)}}},
		{"pids", policy.Limits{Pids: 128}, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: 128}}},
		{"all", policy.Limits{Memory: 1 << 30, CPUs: 1, Pids: 512}, &specs.LinuxResources{
			Memory: &specs.LinuxMemory{Limit: i64(1 << 30), Swap: i64(1 << 30)},
			CPU:    &specs.LinuxCPU{Quota: i64(100000), Period: u64(100000), Shares: u64(1024)},
			Pids:   &specs.LinuxPids{Limit: 512},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := resources(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("resources(%+v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestRlimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   policy.Limits
		host hostLimits
		want []specs.POSIXRlimit
	}{
		{"nothing", policy.Limits{}, hostLimits{}, nil},
		{"policy nofile", policy.Limits{NoFile: 4096}, hostLimits{}, []specs.POSIXRlimit{{Type: "nofile", Hard: 4096, Soft: 4096}}},
		{"policy nofile wins over host default", policy.Limits{NoFile: 4096}, hostLimits{NoFile: 20000, NProc: 32768},
			[]specs.POSIXRlimit{{Type: "nofile", Hard: 4096, Soft: 4096}, {Type: "nproc", Hard: 32768, Soft: 32768}}},
		{"host defaults", policy.Limits{}, hostLimits{NoFile: 20000, NProc: 32768},
			[]specs.POSIXRlimit{{Type: "nofile", Hard: 20000, Soft: 20000}, {Type: "nproc", Hard: 32768, Soft: 32768}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rlimits(tc.in, tc.host); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("rlimits = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseUlimits(t *testing.T) {
	for _, tc := range []struct {
		conf          string
		nofile, nproc uint64
	}{
		{"", 0, 0},
		{"[containers]\n#default_ulimits = [\"nofile=1:1\"]\n", 0, 0},
		{"[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n", 20000, 32768},
		{"[containers]\ndefault_ulimits = [\n  \"nproc=100:200\",\n]\n", 0, 200},
		{"[containers]\ndefault_ulimits = [\"nofile=1024\"]\n", 1024, 0},
	} {
		nofile, nproc := parseUlimits(tc.conf)
		if nofile != tc.nofile || nproc != tc.nproc {
			t.Errorf("parseUlimits(%q) = %d, %d, want %d, %d", tc.conf, nofile, nproc, tc.nofile, tc.nproc)
		}
	}
}

func TestNetworkFor(t *testing.T) {
	none := networkFor(policy.NetworkNone, "")
	if none.NetNS.NSMode != specgen.NoNetwork || len(none.Mounts) != 0 || len(none.InitArgs) != 0 || len(none.Env) != 0 {
		t.Errorf("none: %+v", none)
	}
	open := networkFor(policy.NetworkOpen, "")
	if open.NetNS.NSMode != specgen.Default || len(open.Mounts) != 0 || len(open.Env) != 0 {
		t.Errorf("open: %+v", open)
	}
	al := networkFor(policy.NetworkAllowlist, "/var/lib/corral/proxy/ws_1/proxy.sock")
	if al.NetNS.NSMode != specgen.NoNetwork {
		t.Errorf("allowlist netns %q, want none", al.NetNS.NSMode)
	}
	wantMount := specs.Mount{Type: "bind", Source: "/var/lib/corral/proxy/ws_1", Destination: "/run/corral", Options: []string{"rbind", "ro"}}
	if len(al.Mounts) != 1 || !reflect.DeepEqual(al.Mounts[0], wantMount) {
		t.Errorf("allowlist mounts %+v, want %+v", al.Mounts, wantMount)
	}
	if !reflect.DeepEqual(al.InitArgs, []string{"--proxy", runtime.ProxySocketInSandbox}) {
		t.Errorf("allowlist init args %q", al.InitArgs)
	}
	if !reflect.DeepEqual(al.Env, runtime.ProxyEnv()) {
		t.Errorf("allowlist env %v", al.Env)
	}
}

func TestSpecFor(t *testing.T) {
	s := runtime.Spec{
		ID:     "ws_1",
		Image:  "img",
		Env:    map[string]string{"A": "1", "HOME": "/elsewhere"},
		Labels: map[string]string{"x": "y", runtime.LabelServer: "forged"},
		Policy: policy.Policy{
			Limits:  policy.Limits{Memory: 64 << 20, NoFile: 100},
			Network: policy.Network{Mode: policy.NetworkAllowlist},
		},
		ProxySocket: "/p/ws_1/proxy.sock",
	}
	g := specFor("srv", "/usr/bin/corral", hostLimits{NProc: 50}, s)
	if g.Name != "corral-ws_1" || g.Image != "img" || g.WorkDir != runtime.WorkspaceDir {
		t.Errorf("name %q image %q workdir %q", g.Name, g.Image, g.WorkDir)
	}
	if !reflect.DeepEqual(g.Entrypoint, []string{runtime.InitPathInSandbox, "init", "--proxy", runtime.ProxySocketInSandbox}) {
		t.Errorf("entrypoint %q", g.Entrypoint)
	}
	if g.Env["A"] != "1" || g.Env["HOME"] != "/elsewhere" || g.Env["HTTP_PROXY"] != "http://"+runtime.ProxyListenAddr {
		t.Errorf("env %v", g.Env)
	}
	if g.Labels[runtime.LabelServer] != "srv" || g.Labels[runtime.LabelWorkspace] != "ws_1" || g.Labels[runtime.LabelManaged] != "true" || g.Labels["x"] != "y" {
		t.Errorf("labels %v", g.Labels)
	}
	if len(g.Volumes) != 1 || g.Volumes[0].Name != "corral-ws_1" || g.Volumes[0].Dest != runtime.WorkspaceDir {
		t.Errorf("volumes %+v", g.Volumes)
	}
	if len(g.Mounts) != 2 || g.Mounts[0].Source != "/usr/bin/corral" || g.Mounts[0].Destination != runtime.InitPathInSandbox ||
		!strings.Contains(strings.Join(g.Mounts[0].Options, ","), "ro") || g.Mounts[1].Destination != "/run/corral" {
		t.Errorf("mounts %+v", g.Mounts)
	}
	if g.ResourceLimits == nil || *g.ResourceLimits.Memory.Limit != 64<<20 {
		t.Errorf("resources %+v", g.ResourceLimits)
	}
	if !reflect.DeepEqual(g.Rlimits, []specs.POSIXRlimit{{Type: "nofile", Hard: 100, Soft: 100}, {Type: "nproc", Hard: 50, Soft: 50}}) {
		t.Errorf("rlimits %+v", g.Rlimits)
	}
	if g.NetNS.NSMode != specgen.NoNetwork {
		t.Errorf("netns %q", g.NetNS.NSMode)
	}
}

func TestCapabilities(t *testing.T) {
	info := func(rootless bool, cg string, ctrls ...string) *define.Info {
		i := &define.Info{Host: &define.HostInfo{CgroupsVersion: cg, CgroupControllers: ctrls}, Version: define.Version{Version: "4.3.1"}}
		i.Host.Security.Rootless = rootless
		return i
	}
	for _, tc := range []struct {
		name              string
		info              *define.Info
		proxy             bool
		memory, cpu, pids bool
		allowlist         bool
	}{
		{"rootful v1", info(false, "v1"), true, true, true, true, true},
		{"rootless v1", info(true, "v1"), true, false, false, false, true},
		{"rootless v2 all delegated", info(true, "v2", "cpu", "memory", "pids"), true, true, true, true, true},
		{"rootless v2 only memory and pids", info(true, "v2", "memory", "pids"), false, true, false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := capabilities(tc.info, tc.proxy).Policy
			if c.Memory != tc.memory || c.CPU != tc.cpu || c.Pids != tc.pids {
				t.Errorf("memory/cpu/pids = %v/%v/%v, want %v/%v/%v", c.Memory, c.CPU, c.Pids, tc.memory, tc.cpu, tc.pids)
			}
			if c.Disk || c.Why["disk"] == "" || !c.NoFile {
				t.Errorf("disk %v (why %q), nofile %v", c.Disk, c.Why["disk"], c.NoFile)
			}
			if c.SupportsNetwork(policy.NetworkAllowlist) != tc.allowlist || !c.SupportsNetwork(policy.NetworkNone) || !c.SupportsNetwork(policy.NetworkOpen) {
				t.Errorf("network modes %v", c.Network)
			}
			for f, ok := range map[string]bool{"memory": c.Memory, "cpu": c.CPU, "pids": c.Pids, "network:allowlist": c.SupportsNetwork(policy.NetworkAllowlist)} {
				if !ok && c.Why[f] == "" {
					t.Errorf("%s unsupported without a reason", f)
				}
			}
		})
	}
}

func TestStateOf(t *testing.T) {
	for in, want := range map[string]runtime.State{
		"running": runtime.StateRunning, "paused": runtime.StateRunning,
		"created": runtime.StateCreated, "configured": runtime.StateCreated, "initialized": runtime.StateCreated,
		"exited": runtime.StateStopped, "stopped": runtime.StateStopped, "stopping": runtime.StateStopped,
	} {
		if got := stateOf(in); got != want {
			t.Errorf("stateOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLinkTarget(t *testing.T) {
	for _, tc := range []struct {
		dir, target, want string
		ok                bool
	}{
		{"", "b", "b", true},
		{"a", "b/c", "a/b/c", true},
		{"a", "../b", "b", true},
		{"a", "../..", "", false},
		{"", "/", "", false},
		{"", "/etc", "", false},
		{"", "/workspace", "", true},
		{"x", "/workspace/y", "y", true},
		{"", "/workspacex", "", false},
	} {
		got, ok := linkTarget(tc.dir, tc.target)
		if got != tc.want || ok != tc.ok {
			t.Errorf("linkTarget(%q, %q) = %q, %v, want %q, %v", tc.dir, tc.target, got, ok, tc.want, tc.ok)
		}
	}
}

func TestImageHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"busybox": "", "library/busybox": "", "docker.io/library/busybox": "docker.io",
		"127.0.0.1:5001/x/y:t": "127.0.0.1:5001", "localhost/x": "localhost", "localhost:5000/x": "localhost:5000",
	} {
		if got := registryOf(in); got != want {
			t.Errorf("registryOf(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]runtime.PullProgress{
		"Copying blob sha256:abc123 done":           {Status: "Copying blob done", Layer: "abc123"},
		"Copying blob 9f8e skipped: already exists": {Status: "Copying blob skipped: already exists", Layer: "9f8e"},
		"Copying config sha256:cfg done":            {Status: "Copying config done", Layer: "cfg"},
		"Writing manifest to image destination":     {Status: "Writing manifest to image destination"},
	} {
		got, ok := parseProgress(in)
		if !ok || got != want {
			t.Errorf("parseProgress(%q) = %+v, %v, want %+v", in, got, ok, want)
		}
	}
	if _, ok := parseProgress("  "); ok {
		t.Errorf("a blank line is progress")
	}
}
