package docker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/moby/moby/client"
)

// bridgeGateway is the host's address on the engine's default bridge: an
// address of this machine that no workspace may reach.
func bridgeGateway(t *testing.T) net.IP {
	t.Helper()
	ifc, err := net.InterfaceByName("docker0")
	if err != nil {
		t.Fatalf("docker0: %v", err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP
		}
	}
	t.Fatalf("docker0 has no IPv4 address")
	return nil
}

func TestNetworkModes(t *testing.T) {
	d := open(t)
	gw := bridgeGateway(t)
	ln, err := net.Listen("tcp", net.JoinHostPort(gw.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "reached-host")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + ln.Addr().String() + "/"

	// Open reaches the internet (runtimetest.RunIsolation), not the host:
	// the firewall drops what its bridge sends to the host's addresses.
	open := workspace(t, d, func(s *runtime.Spec) { s.Policy.Network.Mode = policy.NetworkOpen })
	r := sh(t, d, open, "timeout 5 wget -q -O - "+url)
	if r.ExitCode == 0 || strings.Contains(r.Stdout, "reached-host") {
		t.Errorf("open workspace reached the host at %s: %+v stdout %q", url, r.ExitResult, r.Stdout)
	}

	none := workspace(t, d, nil)
	r = sh(t, d, none, "wget -q -O - "+url)
	if r.ExitCode == 0 || strings.Contains(r.Stdout, "reached-host") {
		t.Errorf("none workspace reached the host: %+v stdout %q", r.ExitResult, r.Stdout)
	}
	// Only loopback inside.
	r = sh(t, d, none, "ls /sys/class/net")
	if strings.Fields(r.Stdout)[0] != "lo" || len(strings.Fields(r.Stdout)) != 1 {
		t.Errorf("none workspace has interfaces %q, want lo only", r.Stdout)
	}
}

func TestMemoryLimitOOM(t *testing.T) {
	d := open(t)
	id := workspace(t, d, func(s *runtime.Spec) { s.Policy.Limits.Memory = 32 << 20 })
	// dd reads into one 64 MiB buffer: more than the workspace may hold.
	r := sh(t, d, id, "dd if=/dev/zero of=/dev/null bs=64M count=1")
	if !r.OOMKilled || r.Signal != "SIGKILL" {
		t.Errorf("64 MiB in a 32 MiB workspace: %+v stderr %q, want OOMKilled", r.ExitResult, r.Stderr)
	}
	// Smaller allocations still work, and are not marked.
	r = sh(t, d, id, "dd if=/dev/zero of=/dev/null bs=4M count=1")
	if r.ExitCode != 0 || r.OOMKilled {
		t.Errorf("4 MiB: %+v stderr %q", r.ExitResult, r.Stderr)
	}
	// A plain SIGKILL is not an OOM kill.
	r = sh(t, d, id, "kill -KILL $$")
	if r.Signal != "SIGKILL" || r.OOMKilled {
		t.Errorf("kill -KILL: %+v, want SIGKILL without OOMKilled", r.ExitResult)
	}
}

func TestPidsLimit(t *testing.T) {
	d := open(t)
	id := workspace(t, d, func(s *runtime.Spec) { s.Policy.Limits.Pids = 20 })
	// Try to hold 40 processes at once; the pids cgroup stops forks at 20.
	r := sh(t, d, id, `i=0; while [ $i -lt 40 ]; do sleep 1000 & i=$((i+1)); done; `+
		`n=$(ls -d /proc/[0-9]* | wc -l); echo $n; kill $(jobs -p) 2>/dev/null; true`)
	n, err := strconv.Atoi(strings.TrimSpace(r.Stdout))
	if err != nil {
		// The shell may not even get to fork ls: that is the limit too.
		if !strings.Contains(r.Stderr, "fork") {
			t.Fatalf("stdout %q stderr %q", r.Stdout, r.Stderr)
		}
		return
	}
	if n > 20 || !strings.Contains(r.Stderr, "fork") {
		t.Errorf("%d processes visible, stderr %q; want at most 20 and fork failures", n, r.Stderr)
	}
}

func TestNoFileLimit(t *testing.T) {
	d := open(t)
	id := workspace(t, d, func(s *runtime.Spec) { s.Policy.Limits.NoFile = 1234 })
	if r := sh(t, d, id, "ulimit -n"); strings.TrimSpace(r.Stdout) != "1234" {
		t.Errorf("ulimit -n = %q, want 1234", r.Stdout)
	}
}

func TestUnsupportedDiskRefused(t *testing.T) {
	d := open(t)
	sp := runtime.Spec{ID: "ws_dt_" + randHex(6), Image: enginetest.TestImage,
		Policy: policy.Policy{Limits: policy.Limits{Disk: 1 << 30}, Network: policy.Network{Mode: policy.NetworkNone}}}
	err := d.Create(ctxT(t), sp)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "unsupported_limit" {
		t.Fatalf("Create with a disk limit: %v, want unsupported_limit", err)
	}
	if _, err := d.Inspect(ctxT(t), sp.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("refused workspace exists: %v", err)
	}
}

func TestLabels(t *testing.T) {
	d := open(t)
	cli := engine(t)
	id := workspace(t, d, func(s *runtime.Spec) { s.Labels = map[string]string{"owner": "alice"} })
	want := map[string]string{runtime.LabelManaged: "true", runtime.LabelWorkspace: id, runtime.LabelServer: serverID, "owner": "alice"}
	st, err := d.Inspect(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cli.ContainerInspect(ctxT(t), st.Detail["container_id"], client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var vol string
	for _, m := range c.Container.Mounts {
		if m.Destination == runtime.WorkspaceDir {
			vol = m.Name
		}
	}
	v, err := cli.VolumeInspect(ctxT(t), vol, client.VolumeInspectOptions{})
	if err != nil {
		t.Fatalf("workspace volume %q: %v", vol, err)
	}
	for k, val := range want {
		if c.Container.Config.Labels[k] != val {
			t.Errorf("container label %s = %q, want %q", k, c.Container.Config.Labels[k], val)
		}
		if v.Volume.Labels[k] != val {
			t.Errorf("volume label %s = %q, want %q", k, v.Volume.Labels[k], val)
		}
	}
	// PID 1 is corral init, from the read-only bind mount.
	if r := sh(t, d, id, "cat /proc/1/cmdline | tr '\\0' ' '"); r.Stdout != runtime.InitPathInSandbox+" init " {
		t.Errorf("PID 1 is %q", r.Stdout)
	}
	if r := sh(t, d, id, "echo x > "+runtime.InitPathInSandbox); r.ExitCode == 0 {
		t.Errorf("the init binary is writable from the workspace")
	}
	// Another server's driver does not list it.
	all, err := d.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range all {
		found = found || s.ID == id
	}
	if !found {
		t.Errorf("List lacks %s: %+v", id, all)
	}
}

func TestListOnlyOwnServer(t *testing.T) {
	mine := open(t)
	id := workspace(t, mine, nil)
	other, err := runtime.Open("docker", runtime.Config{ServerID: "other-" + randHex(4), InitPath: initPath(t), Options: enginetest.Docker(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	all, err := other.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.ID == id {
			t.Errorf("another server's List shows %s", id)
		}
	}
	if _, err := other.Inspect(context.Background(), id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("another server's Inspect(%s) = %v, want not found", id, err)
	}
}

// TestAllowlistThroughProxySocket checks the allowlist plumbing: the
// workspace has no network of its own, and its HTTP client reaches the
// world only through the forwarder in `corral init` and the proxy socket
// bind-mounted in. The test's socket server stands in for the server's
// proxy and answers every request itself, so nothing leaves the machine.
func TestAllowlistThroughProxySocket(t *testing.T) {
	d := open(t)
	dir, err := os.MkdirTemp("", "corral-proxy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "via-proxy %s %s", r.Method, r.URL)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	id := workspace(t, d, func(s *runtime.Spec) {
		s.Policy.Network.Mode = policy.NetworkAllowlist
		s.ProxySocket = sock
	})
	if r := sh(t, d, id, "test -S "+runtime.ProxySocketInSandbox+" && echo $HTTP_PROXY"); r.Stdout != "http://"+runtime.ProxyListenAddr+"\n" {
		t.Fatalf("proxy socket or HTTP_PROXY missing: %+v %q %q", r.ExitResult, r.Stdout, r.Stderr)
	}
	// Start returned once the forwarder listened: the first request works.
	r := sh(t, d, id, "wget -q -O - http://allowed.example/path")
	if r.Stdout != "via-proxy GET http://allowed.example/path" {
		t.Errorf("request through the proxy: %+v stdout %q stderr %q", r.ExitResult, r.Stdout, r.Stderr)
	}
	// The sandbox cannot take the socket away.
	if r := sh(t, d, id, "rm -f "+runtime.ProxySocketInSandbox); r.ExitCode == 0 {
		t.Errorf("the sandbox removed its proxy socket")
	}
	// Without the proxy there is no route anywhere but loopback.
	gw := bridgeGateway(t)
	if r := sh(t, d, id, "wget -q -O - -Y off http://"+gw.String()+":9/"); r.ExitCode == 0 {
		t.Errorf("direct connection from an allowlist workspace succeeded: %q", r.Stdout)
	}
	if r := sh(t, d, id, "ls /sys/class/net"); strings.TrimSpace(r.Stdout) != "lo" {
		t.Errorf("allowlist workspace has interfaces %q, want lo only", r.Stdout)
	}
}

// TestCreateFailureLeavesNothing makes the engine refuse the container (its
// proxy socket directory does not exist) after the volume was made, and
// checks that the volume went too.
func TestCreateFailureLeavesNothing(t *testing.T) {
	d := open(t)
	cli := engine(t)
	sp := runtime.Spec{ID: "ws_dt_" + randHex(6), Image: enginetest.TestImage,
		Policy:      policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist}},
		ProxySocket: filepath.Join(t.TempDir(), "missing", "proxy.sock")}
	if err := d.Create(ctxT(t), sp); err == nil {
		d.Remove(context.Background(), sp.ID)
		t.Fatalf("Create with a missing proxy socket directory succeeded")
	}
	f := client.Filters{}.Add("label", runtime.LabelWorkspace+"="+sp.ID)
	cs, err := cli.ContainerList(ctxT(t), client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	vs, err := cli.VolumeList(ctxT(t), client.VolumeListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Items) != 0 || len(vs.Items) != 0 {
		t.Errorf("failed Create left %d containers and %d volumes", len(cs.Items), len(vs.Items))
	}
	// The ID is free again.
	sp.Policy.Network.Mode, sp.ProxySocket = policy.NetworkNone, ""
	if err := d.Create(ctxT(t), sp); err != nil {
		t.Fatalf("Create after the failed one: %v", err)
	}
	if err := d.Remove(ctxT(t), sp.ID); err != nil {
		t.Fatal(err)
	}
}
