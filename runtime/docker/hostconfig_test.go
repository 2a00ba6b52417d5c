package docker

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/system"
)

func ptr[T any](v T) *T { return &v }

func TestResources(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   policy.Limits
		want container.Resources
	}{
		{"nothing set", policy.Limits{}, container.Resources{}},
		{"memory caps swap too", policy.Limits{Memory: 256 << 20},
			container.Resources{Memory: 256 << 20, MemorySwap: 256 << 20}},
		{"half a CPU", policy.Limits{CPUs: 0.5}, container.Resources{NanoCPUs: 500_000_000, CPUShares: 1024}},
		{"two CPUs", policy.Limits{CPUs: 2}, container.Resources{NanoCPUs: 2_000_000_000, CPUShares: 1024}},
		{"pids", policy.Limits{Pids: 128}, container.Resources{PidsLimit: ptr(int64(128))}},
		{"nofile soft = hard", policy.Limits{NoFile: 4096},
			container.Resources{Ulimits: []*container.Ulimit{{Name: "nofile", Soft: 4096, Hard: 4096}}}},
		{"all together, timeouts ignored", policy.Limits{Memory: 1 << 30, CPUs: 1, Pids: 512, NoFile: 1024, Timeout: policy.Duration(60e9)},
			container.Resources{Memory: 1 << 30, MemorySwap: 1 << 30, NanoCPUs: 1e9, CPUShares: 1024, PidsLimit: ptr(int64(512)),
				Ulimits: []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 1024}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := resources(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("resources(%+v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestNetworkTranslation(t *testing.T) {
	const sock = "/var/lib/corral/proxy/ws_1/proxy.sock"
	for _, tc := range []struct {
		mode       policy.Mode
		wantMode   container.NetworkMode
		entrypoint []string
		proxyMount bool
		proxyEnv   bool
	}{
		{policy.NetworkNone, "none", []string{runtime.InitPathInSandbox, "init"}, false, false},
		{policy.NetworkOpen, "bridge", []string{runtime.InitPathInSandbox, "init"}, false, false},
		{policy.NetworkAllowlist, "none", []string{runtime.InitPathInSandbox, "init", "--proxy", runtime.ProxySocketInSandbox}, true, true},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			if got := networkMode(tc.mode); got != tc.wantMode {
				t.Errorf("networkMode = %q, want %q", got, tc.wantMode)
			}
			if got := entrypoint(tc.mode, sock); !slices.Equal(got, tc.entrypoint) {
				t.Errorf("entrypoint = %q, want %q", got, tc.entrypoint)
			}
			ms := mounts("vol", "/usr/bin/corral", tc.mode, sock)
			want := []mount.Mount{
				{Type: mount.TypeVolume, Source: "vol", Target: runtime.WorkspaceDir},
				{Type: mount.TypeBind, Source: "/usr/bin/corral", Target: runtime.InitPathInSandbox, ReadOnly: true},
			}
			if tc.proxyMount {
				want = append(want, mount.Mount{Type: mount.TypeBind, Source: "/var/lib/corral/proxy/ws_1", Target: "/run/corral", ReadOnly: true})
			}
			if !reflect.DeepEqual(ms, want) {
				t.Errorf("mounts = %+v, want %+v", ms, want)
			}
			env := containerEnv(map[string]string{"FOO": "bar", "HOME": "/elsewhere"}, tc.mode)
			if !slices.Contains(env, "FOO=bar") || !slices.Contains(env, "HOME=/workspace") || slices.Contains(env, "HOME=/elsewhere") {
				t.Errorf("env %q lacks FOO=bar or HOME=/workspace", env)
			}
			hasProxy := slices.Contains(env, "HTTPS_PROXY=http://"+runtime.ProxyListenAddr)
			if hasProxy != tc.proxyEnv {
				t.Errorf("env %q: proxy variables present = %v, want %v", env, hasProxy, tc.proxyEnv)
			}
			if !slices.IsSorted(env) {
				t.Errorf("env not sorted: %q", env)
			}
		})
	}
}

func TestProxySocketName(t *testing.T) {
	// A socket with another name still works: the forwarder is told where.
	if got := entrypoint(policy.NetworkAllowlist, "/tmp/x/ws_9.sock"); got[len(got)-1] != "/run/corral/ws_9.sock" {
		t.Errorf("entrypoint = %q", got)
	}
}

func TestContainerSpec(t *testing.T) {
	sp := runtime.Spec{
		ID: "ws_a", Env: map[string]string{"A": "1"},
		Policy: policy.Policy{Limits: policy.Limits{Memory: 64 << 20, Pids: 32}, Network: policy.Network{Mode: policy.NetworkNone}},
	}
	labels := map[string]string{runtime.LabelWorkspace: "ws_a"}
	cfg, hc := containerSpec(sp, "img:1", "corral-s-ws_a", "/bin/corral", labels)
	if cfg.Image != "img:1" || cfg.WorkingDir != runtime.WorkspaceDir || !reflect.DeepEqual(cfg.Labels, labels) {
		t.Errorf("config = %+v", cfg)
	}
	if len(cfg.Cmd) != 0 || cfg.Entrypoint[0] != runtime.InitPathInSandbox {
		t.Errorf("the image's command must not run: entrypoint %q cmd %q", cfg.Entrypoint, cfg.Cmd)
	}
	if hc.Memory != 64<<20 || hc.MemorySwap != 64<<20 || *hc.PidsLimit != 32 || hc.NetworkMode != "none" {
		t.Errorf("host config = %+v", hc)
	}
	if hc.Privileged || len(hc.CapAdd) > 0 || !slices.Contains(hc.SecurityOpt, "no-new-privileges") {
		t.Errorf("host config grants too much: privileged %v caps %q security %q", hc.Privileged, hc.CapAdd, hc.SecurityOpt)
	}
}

func TestCapabilitiesFrom(t *testing.T) {
	full := system.Info{ServerVersion: "20.10.24", CgroupVersion: "1", CgroupDriver: "cgroupfs",
		MemoryLimit: true, SwapLimit: true, CPUCfsQuota: true, CPUCfsPeriod: true, PidsLimit: true}
	for _, tc := range []struct {
		name              string
		info              func(i *system.Info)
		local             bool
		mem, cpu, pids    bool
		whyMem, isolation string
	}{
		{"rootful v1", nil, true, true, true, true, "", "cgroup v1, cgroupfs"},
		{"no swap limit", func(i *system.Info) { i.SwapLimit = false }, true, false, true, true, "swap", "cgroup v1"},
		{"no memory cgroup", func(i *system.Info) { i.MemoryLimit = false }, true, false, true, true, "no memory cgroup", "docker"},
		{"rootless v1", func(i *system.Info) { i.SecurityOptions = []string{"name=seccomp", "name=rootless"} }, true, false, false, false, "rootless", "rootless"},
		{"rootless v2", func(i *system.Info) { i.SecurityOptions = []string{"name=rootless"}; i.CgroupVersion = "2" }, true, true, true, true, "", "cgroup v2"},
		{"remote", nil, false, true, true, true, "", "not on this host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := full
			if tc.info != nil {
				tc.info(&info)
			}
			c := capabilitiesFrom(info, tc.local)
			s := c.Policy
			if s.Memory != tc.mem || s.CPU != tc.cpu || s.Pids != tc.pids {
				t.Errorf("memory/cpu/pids = %v/%v/%v, want %v/%v/%v", s.Memory, s.CPU, s.Pids, tc.mem, tc.cpu, tc.pids)
			}
			if s.Disk || !strings.Contains(s.Why["disk"], "quota") {
				t.Errorf("disk must be unsupported with a reason: %v %q", s.Disk, s.Why["disk"])
			}
			if !s.NoFile || !c.TTY {
				t.Errorf("nofile %v tty %v, want both", s.NoFile, c.TTY)
			}
			if tc.whyMem != "" && !strings.Contains(s.Why["memory"], tc.whyMem) {
				t.Errorf("why memory = %q, want it to mention %q", s.Why["memory"], tc.whyMem)
			}
			if !strings.Contains(c.Isolation, tc.isolation) {
				t.Errorf("isolation %q lacks %q", c.Isolation, tc.isolation)
			}
			for _, m := range policy.Modes {
				if !s.SupportsNetwork(m) {
					t.Errorf("network mode %s unsupported", m)
				}
			}
			// Whatever is unsupported is refused before anything is made.
			err := policy.Check(Name, policy.Policy{Limits: policy.Limits{Memory: 64 << 20, Pids: 10, CPUs: 1},
				Network: policy.Network{Mode: policy.NetworkNone}}, s)
			if (err == nil) != (tc.mem && tc.cpu && tc.pids) {
				t.Errorf("policy.Check = %v", err)
			}
		})
	}
}

func TestExitResult(t *testing.T) {
	for _, tc := range []struct {
		code int
		want runtime.ExitResult
	}{
		{0, runtime.ExitResult{}},
		{3, runtime.ExitResult{ExitCode: 3}},
		{128, runtime.ExitResult{ExitCode: 128}},
		{137, runtime.ExitResult{ExitCode: 137, Signal: "SIGKILL"}},
		{143, runtime.ExitResult{ExitCode: 143, Signal: "SIGTERM"}},
		{255, runtime.ExitResult{ExitCode: 255}},
	} {
		if got := exitResult(tc.code); got != tc.want {
			t.Errorf("exitResult(%d) = %+v, want %+v", tc.code, got, tc.want)
		}
	}
}

func TestStartFailureCode(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		code int
		ok   bool
	}{
		{`OCI runtime exec failed: exec failed: unable to start container process: exec: "nosuch": executable file not found in $PATH: unknown`, 127, true},
		{`OCI runtime exec failed: exec failed: unable to start container process: exec: "/no/such": stat /no/such: no such file or directory: unknown`, 127, true},
		{`OCI runtime exec failed: exec failed: unable to start container process: exec: "/etc/passwd": permission denied: unknown`, 126, true},
		{"permission denied", 0, false}, // a command's own output, not the engine's
	} {
		code, ok := startFailureCode(tc.msg)
		if code != tc.code || ok != tc.ok {
			t.Errorf("startFailureCode(%q) = %d, %v; want %d, %v", tc.msg, code, ok, tc.code, tc.ok)
		}
	}
}

func TestEntryName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		escape   bool
	}{
		{"a/b.txt", "a/b.txt", false},
		{"./a/", "a", false},
		{".", "", false},
		{"a//b", "a/b", false},
		{"/etc/passwd", "", true},
		{"../x", "", true},
		{"a/../../x", "", true},
		{"a/../b", "", true}, // refused outright: ".." never appears in a stream we accept
	} {
		got, err := entryName(tc.in)
		if (err != nil) != tc.escape || got != tc.want {
			t.Errorf("entryName(%q) = %q, %v; want %q, escape %v", tc.in, got, err, tc.want, tc.escape)
		}
	}
}

func TestObjectName(t *testing.T) {
	d := &Driver{serverID: "srv/1 x"}
	if got := d.objectName("ws_1"); got != "corral-srv_1_x-ws_1" {
		t.Errorf("objectName = %q", got)
	}
	l := d.labels("ws_1", map[string]string{"a": "b", runtime.LabelServer: "spoofed"})
	if l[runtime.LabelServer] != "srv/1 x" || l[runtime.LabelManaged] != "true" || l[runtime.LabelWorkspace] != "ws_1" || l["a"] != "b" {
		t.Errorf("labels = %v", l)
	}
}
