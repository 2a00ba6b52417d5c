package podman

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containers/podman/v5/pkg/bindings/containers"
	"github.com/containers/podman/v5/pkg/bindings/images"
	networks "github.com/containers/podman/v5/pkg/bindings/network"
	"github.com/containers/podman/v5/pkg/bindings/volumes"
	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/runtimetest"
)

// modes are the two services every engine test runs against.
var modes = []struct {
	name     string
	rootless bool
}{{"rootful", false}, {"rootless", true}}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// open opens the driver against the rootful or rootless test service with
// a server ID of its own, and checks when t ends that nothing carrying that
// ID is left behind.
func open(t testing.TB, rootless bool, extra map[string]string) *Driver {
	t.Helper()
	return openWith(t, rootless, extra, runtime.NetworkConfig{})
}

// openWith is open with the operator's network settings.
func openWith(t testing.TB, rootless bool, extra map[string]string, netcfg runtime.NetworkConfig) *Driver {
	t.Helper()
	opts := enginetest.Podman(t, rootless)
	for k, v := range extra {
		opts[k] = v
	}
	serverID := "test-" + randHex(6)
	rt, err := runtime.Open(Name, runtime.Config{
		ServerID: serverID,
		DataDir:  t.TempDir(),
		InitPath: testbin.Corral(t),
		Options:  opts,
		Logger:   hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn, Output: io.Discard}),
		Network:  netcfg,
	})
	if err != nil {
		t.Fatalf("open podman driver: %v", err)
	}
	d := rt.(*Driver)
	t.Cleanup(func() {
		// Close first: it removes the open network, source address and
		// firewall when no workspace is left.
		d.Close()
		assertNothingLeft(t, d)
	})
	return d
}

// assertNothingLeft fails t if any container, volume or network labelled
// with d's server ID, or its firewall table or interfaces, still exist.
func assertNothingLeft(t testing.TB, d *Driver) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := d.ctx(ctx)
	filter := map[string][]string{"label": {runtime.LabelServer + "=" + d.serverID}}
	all := true
	ctrs, err := containers.List(c, &containers.ListOptions{All: &all, Filters: filter})
	if err != nil {
		t.Errorf("list containers: %v", err)
	}
	for _, x := range ctrs {
		t.Errorf("container %v (%s) left behind", x.Names, x.State)
	}
	vols, err := volumes.List(c, &volumes.ListOptions{Filters: filter})
	if err != nil {
		t.Errorf("list volumes: %v", err)
	}
	for _, v := range vols {
		t.Errorf("volume %s left behind", v.Name)
	}
	nets, err := networks.List(c, &networks.ListOptions{Filters: filter})
	if err != nil {
		t.Errorf("list networks: %v", err)
	}
	for _, n := range nets {
		t.Errorf("network %s left behind", n.Name)
	}
	for _, x := range nettest.Leftovers(d.serverID) {
		t.Errorf("%s left behind", x)
	}
	if l, err := d.List(ctx); err != nil || len(l) != 0 {
		t.Errorf("List after the test: %v, %v", l, err)
	}
}

func TestConformance(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := open(t, m.rootless, nil)
			runtimetest.Run(t, d, runtimetest.Options{Image: enginetest.TestImage})
			t.Run("Network", func(t *testing.T) { runtimetest.RunNetwork(t, d, enginetest.TestImage) })
			t.Run("Isolation", func(t *testing.T) { runtimetest.RunIsolation(t, d, enginetest.TestImage) })
		})
	}
	// Signals, timeouts and cancellation sent from inside the sandbox
	// (what the driver does when it may not signal from the host) work
	// the same.
	t.Run("rootless-signal-inside", func(t *testing.T) {
		d := open(t, true, nil)
		d.signalInside = true
		runtimetest.Run(t, d, runtimetest.Options{Image: enginetest.TestImage})
	})
	// Workspaces on a size-capped disk behave the same.
	t.Run("rootful-disk", func(t *testing.T) {
		d := open(t, false, nil)
		runtimetest.Run(t, d, runtimetest.Options{Image: enginetest.TestImage, Spec: func(s *runtime.Spec) {
			s.Policy.Limits.Disk = 64 << 20
		}})
	})
}

// workspace creates and starts a workspace with p, removed when t ends.
func workspace(t *testing.T, d *Driver, p policy.Policy) string {
	t.Helper()
	id := "ws_pm_" + randHex(5)
	ctx := context.Background()
	if err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: p, Labels: map[string]string{"purpose": "podman-test"}}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Remove(context.Background(), id); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return id
}

func sh(t *testing.T, d *Driver, id, script string) (runtime.ExitResult, string) {
	t.Helper()
	var out bytes.Buffer
	res, err := runtime.Run(context.Background(), d, id, runtime.ExecSpec{Argv: []string{"sh", "-c", script}, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("run %q: %v", script, err)
	}
	return res, out.String()
}

func TestRootlessCgroupV1Capabilities(t *testing.T) {
	d := open(t, true, nil)
	if !d.Rootless() {
		t.Fatalf("the rootless test service reports rootful")
	}
	if d.cgroupV2 {
		t.Skip("this host runs cgroup v2; the v1 limitation does not apply")
	}
	s := d.Capabilities().Policy
	if s.Memory || s.CPU || s.Pids {
		t.Errorf("rootless on cgroup v1 claims it can enforce memory=%v cpu=%v pids=%v", s.Memory, s.CPU, s.Pids)
	}
	for _, f := range []string{"memory", "cpu", "pids"} {
		if !strings.Contains(s.Why[f], "cgroups V1 rootless") {
			t.Errorf("Why[%s] = %q, want the engine's reason", f, s.Why[f])
		}
	}
	if !s.NoFile || !s.SupportsNetwork(policy.NetworkNone) || !s.SupportsNetwork(policy.NetworkOpen) {
		t.Errorf("rootless lost nofile or network modes: %+v", s)
	}
	// The policy layer refuses, and so does Create, leaving nothing.
	p := policy.Policy{Limits: policy.Limits{Memory: 64 << 20}, Network: policy.Network{Mode: policy.NetworkNone}}
	err := policy.Check(Name, p, s)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "memory") {
		t.Errorf("policy.Check: %v, want unsupported memory", err)
	}
	err = d.Create(context.Background(), runtime.Spec{ID: "ws_pm_" + randHex(5), Image: enginetest.TestImage, Policy: p})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "unsupported_limit" {
		t.Errorf("Create with a memory limit: %v, want unsupported_limit", err)
	}
	// The rootful service on the same host can.
	r := open(t, false, nil).Capabilities().Policy
	if !r.Memory || !r.CPU || !r.Pids {
		t.Errorf("rootful cannot enforce memory=%v cpu=%v pids=%v", r.Memory, r.CPU, r.Pids)
	}
}

func TestNetworkNone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := open(t, m.rootless, nil)
			id := workspace(t, d, policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}})
			res, out := sh(t, d, id, "ls /sys/class/net")
			if res.ExitCode != 0 || strings.Fields(out)[0] != "lo" || len(strings.Fields(out)) != 1 {
				t.Errorf("interfaces in network none: %+v %q, want only lo", res, out)
			}
			res, out = sh(t, d, id, fmt.Sprintf("echo hi | nc 127.0.0.1 %d", port))
			if res.ExitCode == 0 {
				t.Errorf("nc to the host's 127.0.0.1:%d from network none succeeded: %q", port, out)
			}
			if n := accepted.Load(); n != 0 {
				t.Errorf("the host listener accepted %d connections from network none", n)
			}
		})
	}
}

func TestMemoryLimitOOM(t *testing.T) {
	d := open(t, false, nil)
	id := workspace(t, d, policy.Policy{
		Limits:  policy.Limits{Memory: 32 << 20, Pids: 64, CPUs: 0.5},
		Network: policy.Network{Mode: policy.NetworkNone},
	})
	// dd allocates its 128MiB block and fills it: over the limit, no swap.
	res, out := sh(t, d, id, "dd if=/dev/zero of=/dev/null bs=128M count=1")
	if !res.OOMKilled || res.ExitCode != 137 {
		t.Errorf("dd bs=128M under a 32MiB limit: %+v %q, want OOM-killed exit 137", res, out)
	}
	// Below the limit works, and the workspace is still usable.
	res, out = sh(t, d, id, "dd if=/dev/zero of=/dev/null bs=4M count=1")
	if res.ExitCode != 0 || res.OOMKilled {
		t.Errorf("dd bs=4M: %+v %q", res, out)
	}
	// The other limits are in force as well.
	_, out = sh(t, d, id, "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max")
	if f := strings.Fields(out); len(f) < 3 || f[0] != "64" || f[1] != "50000" {
		t.Errorf("pids.max, cpu quota in the sandbox: %q, want 64 and 50000", out)
	}
}

func TestLabels(t *testing.T) {
	d := open(t, false, nil)
	id := workspace(t, d, policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}})
	c := d.ctx(context.Background())
	data, err := containers.Inspect(c, containerName(id), nil)
	if err != nil {
		t.Fatal(err)
	}
	vol, err := volumes.Inspect(c, volumeName(id), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		runtime.LabelManaged: "true", runtime.LabelWorkspace: id, runtime.LabelServer: d.serverID, "purpose": "podman-test",
	}
	for k, v := range want {
		if got := data.Config.Labels[k]; got != v {
			t.Errorf("container label %s = %q, want %q", k, got, v)
		}
		if got := vol.Labels[k]; got != v {
			t.Errorf("volume label %s = %q, want %q", k, got, v)
		}
	}
	// Another server on the same engine sees nothing of it.
	other := open(t, false, nil)
	if _, err := other.Inspect(context.Background(), id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("another server's Inspect: %v, want ErrNotFound", err)
	}
	if err := other.Remove(context.Background(), id); err != nil {
		t.Errorf("another server's Remove: %v", err)
	}
	if st, err := d.Inspect(context.Background(), id); err != nil || st.State != runtime.StateRunning {
		t.Errorf("after another server's Remove: %+v, %v", st, err)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	const registry = "127.0.0.1:5001"
	startRegistry(t, registry)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := open(t, m.rootless, map[string]string{"insecure_registries": registry})
			ctx := context.Background()
			for _, tc := range []struct {
				image, code string
			}{
				{registry + "/corral/no-such-image:" + randHex(4), "image_not_found"},
				// Nothing listens on port 1 of the loopback.
				{"127.0.0.1:1/corral/x:latest", "image_pull_failed"},
			} {
				id := "ws_pm_" + randHex(5)
				err := d.Create(ctx, runtime.Spec{ID: id, Image: tc.image, Policy: policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}}})
				if errdefs.Code(err) != tc.code {
					t.Errorf("Create from %s: %v (code %q), want %s", tc.image, err, errdefs.Code(err), tc.code)
				}
				if _, err := d.Inspect(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
					t.Errorf("Inspect after a failed Create: %v", err)
				}
			}
			// A spec the service refuses after the volume exists (a bind
			// mount of a missing directory): the volume goes too
			// (assertNothingLeft checks at cleanup).
			id := "ws_pm_" + randHex(5)
			err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, ProxySocket: "/nonexistent-" + randHex(4) + "/proxy.sock",
				Policy: policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist}}})
			if err == nil {
				t.Errorf("Create with a missing bind-mount source succeeded")
				d.Remove(ctx, id)
			}
			if _, err := d.Inspect(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("Inspect after a failed Create: %v", err)
			}
		})
	}
}

// tableResolver resolves the test's made-up names.
type tableResolver map[string][]netip.Addr

func (r tableResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestNetworkAllowlist(t *testing.T) {
	// An upstream on another machine at a private address, reachable only
	// through the proxy: the operator's AllowPrivate opens it (loopback and
	// this machine it never does).
	host := nettest.StartPrivateHost(t)
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from upstream %s", r.Host)
	})}
	ln := host.Listen(t)
	go up.Serve(ln)
	defer up.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	// Sandboxes of another user (rootless) must reach the socket.
	dir, err := os.MkdirTemp("", "corral-pm-proxy-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var denied atomic.Int32
	proxy := &policy.Proxy{
		Dir:          dir,
		AllowPrivate: true,
		Resolver:     tableResolver{"allowed.test": {host.Addr}, "denied.test": {host.Addr}},
		OnDeny:       func(string, policy.Denial) { denied.Add(1) },
	}
	defer proxy.Shutdown(context.Background())

	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := open(t, m.rootless, nil)
			if !d.Capabilities().Policy.SupportsNetwork(policy.NetworkAllowlist) {
				t.Fatalf("allowlist unsupported: %s", d.Capabilities().Policy.Why["network:allowlist"])
			}
			id := "ws_pm_" + randHex(5)
			sock, err := proxy.Open(id, []string{"allowed.test"})
			if err != nil {
				t.Fatal(err)
			}
			defer proxy.Close(id)
			ctx := context.Background()
			p := policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"allowed.test"}}}
			if err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: p, ProxySocket: sock}); err != nil {
				t.Fatalf("Create: %v", err)
			}
			defer d.Remove(ctx, id)
			if err := d.Start(ctx, id); err != nil {
				t.Fatalf("Start: %v", err)
			}
			// The driver's part: the socket is in the sandbox, PID 1 was
			// told to forward to it, the tools are pointed at the forwarder.
			res, out := sh(t, d, id, "test -S "+runtime.ProxySocketInSandbox+" && echo socket; tr '\\0' ' ' </proc/1/cmdline; echo; echo $HTTP_PROXY")
			want := fmt.Sprintf("socket\n%s init --proxy %s \nhttp://%s\n", runtime.InitPathInSandbox, runtime.ProxySocketInSandbox, runtime.ProxyListenAddr)
			if res.ExitCode != 0 || out != want {
				t.Fatalf("proxy plumbing in the sandbox: %+v\n%q\nwant\n%q", res, out, want)
			}
			// The forwarder may take a moment to listen after PID 1 starts.
			for i := 0; i < 50; i++ {
				res, out = sh(t, d, id, fmt.Sprintf("wget -q -O- http://allowed.test:%d/ 2>&1", port))
				if res.ExitCode == 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if res.ExitCode != 0 || out != fmt.Sprintf("hello from upstream allowed.test:%d", port) {
				t.Errorf("allowed host through the proxy: %+v %q (is `corral init --proxy` forwarding %s?)", res, out, runtime.ProxyListenAddr)
			}
			before := denied.Load()
			res, out = sh(t, d, id, fmt.Sprintf("wget -q -O- http://denied.test:%d/ 2>&1", port))
			if res.ExitCode == 0 || denied.Load() == before {
				t.Errorf("denied host: %+v %q, denials %d", res, out, denied.Load()-before)
			}
			// Around the proxy there is no route.
			res, out = sh(t, d, id, fmt.Sprintf("echo x | nc %s %d", host.Addr, port))
			if res.ExitCode == 0 || strings.Contains(out, "hello") {
				t.Errorf("direct connection to the upstream: %+v %q", res, out)
			}
			if _, out = sh(t, d, id, "ls /sys/class/net"); out != "lo\n" {
				t.Errorf("interfaces: %q, want only lo", out)
			}
		})
	}
}

// startRegistry runs Debian's docker-registry on addr with its storage in a
// temporary directory, until t ends.
func startRegistry(t *testing.T, addr string) {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		enginetest.Unavailable(t, "docker-registry", "sudo .ci/setup-podman.sh", err)
	}
	// The port must be ours: a registry of someone else's answering
	// there would pass the readiness check below and go away later.
	if ln, err := net.Listen("tcp", addr); err != nil {
		t.Fatalf("registry address %s is in use: %v", addr, err)
	} else {
		ln.Close()
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start registry: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	// logs is written by the process until it exits: read it after.
	fail := func(format string, args ...any) {
		t.Helper()
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf(format+" (exit: %v)\n%s", append(args, waitErr, logs.String())...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				select {
				case <-exited:
					fail("registry exited")
				default:
				}
				return
			}
		}
		select {
		case <-exited:
			fail("registry exited")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			fail("registry on %s did not answer: %v", addr, err)
		}
	}
}

func TestPullFromLocalRegistry(t *testing.T) {
	const registry = "127.0.0.1:5001"
	startRegistry(t, registry)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := open(t, m.rootless, map[string]string{"insecure_registries": registry})
			ctx := context.Background()
			c := d.ctx(ctx)
			ref := registry + "/corral/pulltest:" + randHex(4)
			skip := true
			if err := images.Push(c, enginetest.TestImage, ref, &images.PushOptions{SkipTLSVerify: &skip, ProgressWriter: ptr[io.Writer](io.Discard)}); err != nil {
				t.Fatalf("push %s: %v", ref, err)
			}
			defer images.Remove(c, []string{ref}, nil)
			var updates []runtime.PullProgress
			if err := d.Pull(ctx, ref, func(p runtime.PullProgress) { updates = append(updates, p) }); err != nil {
				t.Fatalf("Pull: %v", err)
			}
			if ok, err := images.Exists(c, ref, nil); err != nil || !ok {
				t.Fatalf("image %s after Pull: exists=%v, %v", ref, ok, err)
			}
			var blobs int
			for _, u := range updates {
				if strings.HasPrefix(u.Status, "Copying blob") && u.Layer != "" {
					blobs++
				}
			}
			if blobs == 0 || updates[len(updates)-1].Status != "Pull complete" {
				t.Errorf("progress updates %+v: want a blob with its layer and a final Pull complete", updates)
			}
			// Present: not pulled again.
			updates = nil
			if err := d.Pull(ctx, ref, func(p runtime.PullProgress) { updates = append(updates, p) }); err != nil || len(updates) != 0 {
				t.Errorf("second Pull: %v, updates %+v", err, updates)
			}
			// A workspace runs from it.
			id := "ws_pm_" + randHex(5)
			if err := d.Create(ctx, runtime.Spec{ID: id, Image: ref, Policy: policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}}}); err != nil {
				t.Fatalf("Create from the pulled image: %v", err)
			}
			defer d.Remove(ctx, id)

			err := d.Pull(ctx, registry+"/corral/no-such-image:latest", nil)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Code(err) != "image_not_found" {
				t.Errorf("Pull of a missing image: %v (code %q), want image_not_found", err, errdefs.Code(err))
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestServiceURI(t *testing.T) {
	for _, tc := range []struct {
		opt, env, xdg string
		euid          int
		want          string
	}{
		{"unix:///x.sock", "unix:///env.sock", "/run/user/5", 5, "unix:///x.sock"},
		{"", "unix:///env.sock", "/run/user/5", 5, "unix:///env.sock"},
		{"", "", "/run/user/5", 5, "unix:///run/user/5/podman/podman.sock"},
		{"", "", "/run/user/0", 0, "unix:///run/podman/podman.sock"},
		{"", "", "", 1000, "unix:///run/podman/podman.sock"},
	} {
		if got := serviceURI(tc.opt, tc.env, tc.xdg, tc.euid); got != tc.want {
			t.Errorf("serviceURI(%q, %q, %q, %d) = %q, want %q", tc.opt, tc.env, tc.xdg, tc.euid, got, tc.want)
		}
	}
}

func TestDiskLimit(t *testing.T) {
	d := open(t, false, nil)
	if !d.Capabilities().Policy.Disk {
		t.Fatalf("rootful podman as root cannot enforce disk limits: %s", d.Capabilities().Policy.Why["disk"])
	}
	if r := open(t, true, nil).Capabilities().Policy; r.Disk || r.Why["disk"] == "" {
		t.Errorf("rootless claims disk limits: %v (%q)", r.Disk, r.Why["disk"])
	}
	ctx := context.Background()
	id := workspace(t, d, policy.Policy{Limits: policy.Limits{Disk: 16 << 20}, Network: policy.Network{Mode: policy.NetworkNone}})
	res, out := sh(t, d, id, "ls -A; echo kept > keep; dd if=/dev/zero of=big bs=1M count=32")
	if res.ExitCode == 0 || !strings.Contains(out, "No space left") {
		t.Errorf("writing 32MiB under a 16MiB limit: %+v %q", res, out)
	}
	if strings.Contains(out, "lost+found") {
		t.Errorf("the workspace does not start empty: %q", out)
	}
	// An upload that does not fit says so.
	big := makeTar(t, "big.bin", 20<<20)
	if err := d.CopyIn(ctx, id, "", big); !errors.Is(err, errdefs.ErrInsufficientStorage) || errdefs.Code(err) != "insufficient_storage" {
		t.Errorf("CopyIn of 20MiB into a 16MiB disk: %v, want insufficient_storage", err)
	}
	// and leaves no spool behind on the full disk.
	if _, out := sh(t, d, id, "ls -A"); out != "big\nkeep\n" {
		t.Errorf("after the refused upload the workspace holds %q", out)
	}
	// The files stay, across stop/start and across a reboot (which loses
	// the mount): a newly opened driver mounts the disk again.
	if err := d.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	dir, err := d.volumeDir(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := unmountDisk(ctx, dir); err != nil {
		t.Fatal(err)
	}
	rt, err := New(runtime.Config{ServerID: d.serverID, DataDir: d.dataDir, InitPath: d.initPath, Options: enginetest.Podman(t, false)})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if !isMountPoint(dir) {
		t.Fatalf("reopening the driver did not mount the disk again")
	}
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, out = sh(t, d, id, "cat keep; df -k . | tail -1"); !strings.HasPrefix(out, "kept\n") {
		t.Errorf("after remount: %q", out)
	}
	if err := d.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if isMountPoint(dir) {
		t.Errorf("disk still mounted on %s after Remove", dir)
	}
	if _, err := os.Stat(d.diskImage(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("disk image after Remove: %v", err)
	}
}

// makeTar returns a tar stream holding one file of size zero bytes.
func makeTar(t *testing.T, name string, size int64) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, zeros{}, size); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestExecAfterStopAndRemove(t *testing.T) {
	d := open(t, false, nil)
	ctx := context.Background()
	id := workspace(t, d, policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}})
	if res, _ := sh(t, d, id, "true"); res.ExitCode != 0 {
		t.Fatalf("true: %+v", res)
	}
	if err := d.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err := d.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"true"}})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Exec after Stop: %v, want ErrFailedPrecondition", err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if res, _ := sh(t, d, id, "true"); res.ExitCode != 0 {
		t.Fatalf("true after restart: %+v", res)
	}
	// Removed behind the driver's back, by another client of the engine.
	force, timeout := true, uint(0)
	if _, err := containers.Remove(d.ctx(ctx), containerName(id), &containers.RemoveOptions{Force: &force, Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	_, err = d.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"true"}})
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Exec after the container went: %v, want ErrNotFound", err)
	}
}

func TestCopyRootAndHardLinks(t *testing.T) {
	d := open(t, false, nil)
	ctx := context.Background()
	id := workspace(t, d, policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "./top.txt", Mode: 0o644, Size: 3},
		{Typeflag: tar.TypeDir, Name: "./sub/", Mode: 0o755},
		{Typeflag: tar.TypeLink, Name: "./sub/hard", Linkname: "./top.txt"},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("top"))
		}
	}
	tw.Close()
	if err := d.CopyIn(ctx, id, "", &buf); err != nil {
		t.Fatalf("CopyIn of a ./-style stream: %v", err)
	}
	if _, out := sh(t, d, id, "cat top.txt sub/hard; stat -c %h top.txt"); out != "toptop2\n" {
		t.Errorf("files read %q, want the file and its hard link", out)
	}
	// Hard links out of the tree, or through a symlink, are escapes.
	if err := d.CopyIn(ctx, id, "sub", makeTarEntries(t, &tar.Header{Typeflag: tar.TypeSymlink, Name: "toroot", Linkname: "/"})); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/etc/passwd", "../../etc/passwd", "toroot/etc/passwd"} {
		err := d.CopyIn(ctx, id, "sub", makeTarEntries(t, &tar.Header{Typeflag: tar.TypeLink, Name: "evil", Linkname: target}))
		if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Code(err) != "path_escape" {
			t.Errorf("hard link to %s: %v, want path_escape", target, err)
		}
	}
	for _, typ := range []byte{tar.TypeChar, tar.TypeBlock, tar.TypeFifo} {
		err := d.CopyIn(ctx, id, "", makeTarEntries(t, &tar.Header{Typeflag: typ, Name: "dev", Devmajor: 1, Devminor: 3, Mode: 0o666}))
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "special_file" {
			t.Errorf("special file %c: %v, want special_file", typ, err)
		}
	}
	if _, out := sh(t, d, id, "ls -A sub; test -e dev && echo dev"); out != "hard\ntoroot\n" {
		t.Errorf("refused streams wrote something: %q", out)
	}
	sh(t, d, id, "rm sub/toroot")

	// Through links that stay inside, absolute or relative, entries land
	// where the links lead, as a command in the sandbox would see them.
	if err := d.CopyIn(ctx, id, "", makeTarEntries(t,
		&tar.Header{Typeflag: tar.TypeDir, Name: "real/", Mode: 0o755},
		&tar.Header{Typeflag: tar.TypeSymlink, Name: "rel", Linkname: "real"},
		&tar.Header{Typeflag: tar.TypeSymlink, Name: "abs", Linkname: runtime.WorkspaceDir + "/real"},
		&tar.Header{Typeflag: tar.TypeDir, Name: "rel/a/", Mode: 0o755},
		&tar.Header{Typeflag: tar.TypeDir, Name: "abs/b/", Mode: 0o755},
	)); err != nil {
		t.Fatalf("CopyIn through inside links: %v", err)
	}
	if _, out := sh(t, d, id, "ls real; readlink abs; readlink rel"); out != "a\nb\n"+runtime.WorkspaceDir+"/real\nreal\n" {
		t.Errorf("through inside links: %q", out)
	}
	sh(t, d, id, "rm -r real rel abs")

	rc, err := d.CopyOut(ctx, id, "")
	if err != nil {
		t.Fatalf("CopyOut of the root: %v", err)
	}
	defer rc.Close()
	got := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if h.Typeflag == tar.TypeLink {
			body = []byte("-> " + h.Linkname)
		}
		got[h.Name] = string(body)
	}
	if _, ok := got["./"]; !ok {
		t.Errorf("CopyOut of the root lacks ./: %v", got)
	}
	if !(got["./top.txt"] == "top" && got["./sub/hard"] == "-> ./top.txt" ||
		got["./sub/hard"] == "top" && got["./top.txt"] == "-> ./sub/hard") {
		t.Errorf("CopyOut of the root gave %v", got)
	}
}

// makeTarEntries returns a tar stream of bodiless entries.
func makeTarEntries(t *testing.T, hs ...*tar.Header) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}
