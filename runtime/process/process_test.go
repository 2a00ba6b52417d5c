package process_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/tarfs"
	"github.com/corralhq/corral/runtime/process"
	"github.com/corralhq/corral/runtime/runtimetest"
	"github.com/hashicorp/go-hclog"
)

// open opens a driver on dataDir ("" = a fresh one).
func open(t testing.TB, dataDir string) runtime.Runtime {
	t.Helper()
	return openWith(t, dataDir, nil)
}

// initEnv names the corral binary to use as init when the test binary runs
// unprivileged (TestUnprivileged), where it cannot build one.
const initEnv = "CORRAL_PROCESS_TEST_INIT"

// initPath is the corral binary the driver runs as init.
func initPath(t testing.TB) string {
	if p := os.Getenv(initEnv); p != "" {
		return p
	}
	return testbin.Corral(t)
}

func openWith(t testing.TB, dataDir string, options map[string]string) runtime.Runtime {
	t.Helper()
	return openNet(t, dataDir, runtime.NetworkConfig{}, options)
}

// openNet opens the driver with the operator's network settings nc.
func openNet(t testing.TB, dataDir string, nc runtime.NetworkConfig, options map[string]string) runtime.Runtime {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	rt, err := process.New(runtime.Config{
		DataDir:  dataDir,
		ServerID: "test",
		InitPath: initPath(t),
		Options:  options,
		Network:  nc,
		Logger:   hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	})
	if err != nil {
		t.Fatalf("open process runtime: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

func TestConformance(t *testing.T) {
	rt := open(t, "")
	t.Logf("capabilities: %+v", rt.Capabilities())
	runtimetest.Run(t, rt, runtimetest.Options{})
}

func TestConformanceOpenNetwork(t *testing.T) {
	rt := open(t, "")
	runtimetest.Run(t, rt, runtimetest.Options{Network: policy.NetworkOpen})
}

// Without namespaces the supervisor is a subreaper instead of PID 1, and
// commands see the host's processes; everything else must hold.
func TestConformanceNoNamespaces(t *testing.T) {
	// Without namespaces open cannot be isolated: refused, unless the
	// operator asks for the shared network.
	if c := openWith(t, "", map[string]string{"namespaces": "false"}).Capabilities().Policy; c.SupportsNetwork(policy.NetworkOpen) || c.Why["network:open"] == "" {
		t.Fatalf("namespaces=false offers an isolated network open: %+v", c)
	}
	rt := openNet(t, "", runtime.NetworkConfig{UnsafeShared: true}, map[string]string{"namespaces": "false"})
	if rt.Capabilities().Policy.SupportsNetwork(policy.NetworkNone) {
		t.Fatalf("namespaces=false still offers network none: %+v", rt.Capabilities())
	}
	runtimetest.Run(t, rt, runtimetest.Options{Network: policy.NetworkOpen})
}

// TestUnprivileged runs the conformance suites again as user nobody: user
// namespaces instead of root, no cgroups, no disk limit, and the
// Capabilities saying so.
func TestUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv(initEnv) == "" {
			t.Skip("runs as root, to start the suites as nobody")
		}
		rt := open(t, "")
		c := rt.Capabilities().Policy
		if c.Memory || c.Pids || c.CPU || c.Disk || c.Why["memory"] == "" {
			t.Errorf("unprivileged capabilities claim limits: %+v", c)
		}
		return
	}
	if os.Getenv(initEnv) != "" {
		t.Skip("already unprivileged")
	}
	// The test binary and init binary must be readable by nobody.
	dir, err := os.MkdirTemp("", "corral-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	copyExe := func(src, name string) string {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	testBin := copyExe(self, "process.test")
	initBin := copyExe(testbin.Corral(t), "corral")
	cmd := exec.Command(testBin, "-test.run", "^(TestConformance|TestConformanceNoNamespaces|TestUnprivileged)$", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "TMPDIR=" + dir, "HOME=" + dir, initEnv + "=" + initBin}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("suites as nobody: %v\n%s", err, out)
	}
	t.Logf("as nobody:\n%s", out)
}

// need skips t unless the driver can enforce what it tests. On this
// project's CI hosts (root) everything is available.
func need(t *testing.T, rt runtime.Runtime, ok bool, what string) {
	t.Helper()
	if !ok {
		t.Skipf("host cannot enforce %s: %v", what, rt.Capabilities().Policy.Why)
	}
}

// workspace creates and starts a workspace with policy p and removes it at
// the end of t.
func workspace(t *testing.T, rt runtime.Runtime, p policy.Policy, proxy string) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	id := "ws_pt_" + hex.EncodeToString(b)
	ctx := context.Background()
	if err := rt.Create(ctx, runtime.Spec{ID: id, Policy: p, ProxySocket: proxy}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := rt.Remove(context.Background(), id); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	if err := rt.Start(ctx, id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return id
}

type result struct {
	runtime.ExitResult
	stdout, stderr string
}

func sh(t *testing.T, rt runtime.Runtime, id, script string) result {
	t.Helper()
	out, errb := runtime.NewOutput(0), runtime.NewOutput(0)
	res, err := runtime.Run(context.Background(), rt, id, runtime.ExecSpec{
		Argv: []string{"sh", "-c", script}, Stdout: out, Stderr: errb, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatalf("sh -c %q: %v", script, err)
	}
	return result{res, out.String(), errb.String()}
}

func none() policy.Policy { return policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}} }

// listen opens a TCP listener on the host's loopback (in the test's own
// network namespace) that answers every connection with "pong\n".
func listen(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("pong\n"))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func busybox(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox (for nc and wget) is not installed")
	}
}

func TestNetworkNoneHasNoRoute(t *testing.T) {
	busybox(t)
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.SupportsNetwork(policy.NetworkNone), "network none")
	port := listen(t)
	script := fmt.Sprintf("busybox nc 127.0.0.1 %d </dev/null", port)

	// The same command reaches the listener from an open workspace on the
	// operator's unsafe shared network, so a failure below is the network
	// namespace, not the command.
	shared := openNet(t, "", runtime.NetworkConfig{UnsafeShared: true}, nil)
	open := workspace(t, shared, policy.Policy{Network: policy.Network{Mode: policy.NetworkOpen}}, "")
	if r := sh(t, shared, open, script); r.stdout != "pong\n" {
		t.Fatalf("open workspace on the shared network could not reach the host listener: %+v %q %q", r.ExitResult, r.stdout, r.stderr)
	}
	ws := workspace(t, rt, none(), "")
	if r := sh(t, rt, ws, script); r.ExitCode == 0 || r.stdout != "" {
		t.Errorf("none workspace reached the host listener: %+v %q", r.ExitResult, r.stdout)
	}
	// Loopback works inside, and nothing but loopback exists.
	r := sh(t, rt, ws, "cat /proc/net/dev")
	if !strings.Contains(r.stdout, "lo:") || strings.Count(r.stdout, ":") != 1 {
		t.Errorf("interfaces in a none workspace:\n%s", r.stdout)
	}
	if r := sh(t, rt, ws, "busybox nc -l -p 4444 -e echo inside & sleep 0.2; busybox nc 127.0.0.1 4444 </dev/null"); !strings.Contains(r.stdout, "inside") {
		t.Errorf("loopback inside the workspace does not work: %+v %q %q", r.ExitResult, r.stdout, r.stderr)
	}
}

func TestNetworkAllowlistGoesThroughProxy(t *testing.T) {
	busybox(t)
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.SupportsNetwork(policy.NetworkAllowlist), "network allowlist")
	// A stand-in for the server's egress proxy: answers every request and
	// remembers the request lines.
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	lines := make(chan string, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				lines <- strings.TrimSpace(line)
				c.Write([]byte("HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nvia-proxy\n"))
			}()
		}
	}()
	port := listen(t)
	ws := workspace(t, rt, policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"example.com"}}}, sock)
	r := sh(t, rt, ws, "echo $HTTP_PROXY; busybox wget -q -O- http://example.com/x")
	if r.stdout != "http://"+runtime.ProxyListenAddr+"\nvia-proxy\n" {
		t.Errorf("wget through the proxy: %+v stdout %q stderr %q", r.ExitResult, r.stdout, r.stderr)
	}
	select {
	case l := <-lines:
		if l != "GET http://example.com/x HTTP/1.1" {
			t.Errorf("proxy saw %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("proxy saw no request")
	}
	if r := sh(t, rt, ws, fmt.Sprintf("busybox nc 127.0.0.1 %d </dev/null", port)); r.ExitCode == 0 || r.stdout != "" {
		t.Errorf("allowlist workspace reached the host directly: %+v %q", r.ExitResult, r.stdout)
	}
}

// The allowlist end to end with the server's real egress proxy: an allowed
// name is reached through the forwarder and the proxy, anything else is
// refused by the proxy and recorded, and direct connections have no route.
func TestNetworkAllowlistWithEgressProxy(t *testing.T) {
	busybox(t)
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.SupportsNetwork(policy.NetworkAllowlist), "network allowlist")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	})}
	// The upstream is another machine at a private address, which the
	// operator's AllowPrivate opens (loopback and this machine it never
	// does).
	up := nettest.StartPrivateHost(t)
	ln := up.Listen(t)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	dir, err := os.MkdirTemp("", "cp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	denials := make(chan policy.Denial, 10)
	proxy := &policy.Proxy{
		Dir:          dir,
		AllowPrivate: true,
		Resolver:     fixedResolver{"allowed.test": up.Addr, "denied.test": up.Addr},
		OnDeny:       func(_ string, d policy.Denial) { denials <- d },
	}
	t.Cleanup(func() { proxy.Shutdown(context.Background()) })
	pol := policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{fmt.Sprintf("allowed.test:%d", port)}}}
	id := "ws_pt_proxy_" + strconv.Itoa(os.Getpid())
	sock, err := proxy.Open(id, pol.Network.AllowedHosts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := rt.Create(ctx, runtime.Spec{ID: id, Policy: pol, ProxySocket: sock}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Remove(context.Background(), id) })
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if r := sh(t, rt, id, fmt.Sprintf("busybox wget -q -O- http://allowed.test:%d/x", port)); r.ExitCode != 0 || r.stdout != fmt.Sprintf("hello from allowed.test:%d\n", port) {
		t.Errorf("allowed host: %+v %q %q", r.ExitResult, r.stdout, r.stderr)
	}
	if r := sh(t, rt, id, fmt.Sprintf("busybox wget -q -O- http://denied.test:%d/x", port)); r.ExitCode == 0 {
		t.Errorf("denied host answered: %q", r.stdout)
	}
	select {
	case d := <-denials:
		if d.Host != "denied.test" || d.Reason != policy.DenyNotAllowed {
			t.Errorf("denial %+v", d)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("no denial recorded")
	}
	if r := sh(t, rt, id, fmt.Sprintf("busybox nc %s %d </dev/null", up.Addr, port)); r.ExitCode == 0 {
		t.Errorf("direct connection to the upstream succeeded: %q", r.stdout)
	}
}

type fixedResolver map[string]netip.Addr

func (f fixedResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return []netip.Addr{a}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestMemoryLimitOOMKills(t *testing.T) {
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.Memory, "memory")
	p := none()
	p.Limits.Memory = 32 << 20
	ws := workspace(t, rt, p, "")
	r := sh(t, rt, ws, "head -c 200M /dev/zero | tail")
	if !r.OOMKilled || r.ExitCode != 137 {
		t.Errorf("allocating 200M under a 32MiB limit: %+v, want OOMKilled and exit 137", r.ExitResult)
	}
	// The workspace survives its command's OOM kill.
	if r := sh(t, rt, ws, "head -c 1M /dev/zero | tail | wc -c"); r.ExitCode != 0 || r.OOMKilled || strings.TrimSpace(r.stdout) != "1048576" {
		t.Errorf("small allocation after the OOM kill: %+v %q", r.ExitResult, r.stdout)
	}
}

func TestPidsLimit(t *testing.T) {
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.Pids, "pids")
	p := none()
	p.Limits.Pids = 20
	ws := workspace(t, rt, p, "")
	// Counting uses shell built-ins only: at the limit, nothing can fork.
	r := sh(t, rt, ws, "(i=0; while [ $i -lt 60 ]; do sleep 1000 & i=$((i+1)); done); set -- /proc/[0-9]*; echo $#")
	if !strings.Contains(strings.ToLower(r.stderr), "fork") {
		t.Errorf("60 forks under a pids limit of 20 did not fail: %+v stderr %q", r.ExitResult, r.stderr)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(r.stdout)); err != nil || n > 20 {
		t.Errorf("%q processes in a workspace limited to 20 (%+v, stderr %q)", r.stdout, r.ExitResult, r.stderr)
	}
}

func TestNoFileLimit(t *testing.T) {
	rt := open(t, "")
	p := none()
	p.Limits.NoFile = 321
	ws := workspace(t, rt, p, "")
	if r := sh(t, rt, ws, "ulimit -n; ulimit -Hn"); r.stdout != "321\n321\n" {
		t.Errorf("ulimit -n: %+v %q %q", r.ExitResult, r.stdout, r.stderr)
	}
}

func TestDiskLimit(t *testing.T) {
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.Disk, "disk")
	p := none()
	p.Limits.Disk = 16 << 20
	ws := workspace(t, rt, p, "")
	r := sh(t, rt, ws, "dd if=/dev/zero of=big bs=1M count=40 2>&1; echo rc=$?")
	if !strings.Contains(r.stdout, "No space left") || strings.Contains(r.stdout, "rc=0") {
		t.Errorf("writing 40M into a 16MiB workspace: %q", r.stdout)
	}
	// /tmp is capped as well.
	r = sh(t, rt, ws, "dd if=/dev/zero of=/tmp/big bs=1M count=40 2>&1; echo rc=$?; rm -f /tmp/big")
	if !strings.Contains(r.stdout, "No space left") || strings.Contains(r.stdout, "rc=0") {
		t.Errorf("writing 40M into /tmp of a 16MiB workspace: %q", r.stdout)
	}
	// What fits stays, across Stop and Start.
	sh(t, rt, ws, "rm -f big; echo kept > small")
	ctx := context.Background()
	if err := rt.Stop(ctx, ws); err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, ws); err != nil {
		t.Fatal(err)
	}
	if r := sh(t, rt, ws, "cat small; ls -A"); r.stdout != "kept\nsmall\n" {
		t.Errorf("after restart: %q", r.stdout)
	}
	st, err := rt.Inspect(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	home := st.Detail["dir"]
	if err := rt.Remove(ctx, ws); err != nil {
		t.Fatal(err)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), home) {
		t.Errorf("the workspace's file system is still mounted after Remove")
	}
}

func TestIsolation(t *testing.T) {
	rt := open(t, "")
	if !strings.Contains(rt.Capabilities().Isolation, "pid") {
		t.Skipf("no namespaces here: %s", rt.Capabilities().Isolation)
	}
	ws := workspace(t, rt, none(), "")
	// PID 1 is corral init; the host's processes are not visible.
	r := sh(t, rt, ws, "tr '\\0' ' ' </proc/1/cmdline; echo; hostname; ls -d /proc/[0-9]* | wc -l")
	lines := strings.Split(r.stdout, "\n")
	if len(lines) < 3 || !strings.Contains(lines[0], "init --serve") || lines[1] != ws {
		t.Errorf("inside the workspace: %q", r.stdout)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(lines[2])); n > 5 {
		t.Errorf("%d processes visible in a fresh workspace", n)
	}
	// The host's file system is read-only, the runtime's data directory
	// (other workspaces) hidden, /tmp private; home is writable.
	other := workspace(t, rt, none(), "")
	sh(t, rt, other, "echo secret > secret")
	otherFile := filepath.Join(dirOf(t, rt, other), "secret")
	// Root inside cannot undo it: no CAP_SYS_ADMIN to remount or unmount.
	r = sh(t, rt, ws, fmt.Sprintf("mount -o remount,rw /; umount -l %s; cat %s; touch /usr/corral-escape; echo tmp > /tmp/f && cat /tmp/f; echo home > f && cat f",
		filepath.Dir(filepath.Dir(filepath.Dir(otherFile))), otherFile))
	if r.stdout != "tmp\nhome\n" || !strings.Contains(r.stderr, "Read-only") {
		t.Errorf("confinement: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if _, err := os.Stat("/usr/corral-escape"); err == nil {
		os.Remove("/usr/corral-escape")
		t.Errorf("a workspace wrote to the host's /usr")
	}
	if _, err := os.Stat("/tmp/f"); err == nil {
		if b, _ := os.ReadFile("/tmp/f"); string(b) == "tmp\n" {
			t.Errorf("the workspace's /tmp is the host's")
		}
	}
	// The host's daemons' sockets (under /run) are out of reach; a
	// listening socket made there by the test stands for them.
	if fi, err := os.Stat("/run"); err == nil && fi.IsDir() {
		sockDir, err := os.MkdirTemp("/run", "corral-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sockDir) })
		ln, err := net.Listen("unix", filepath.Join(sockDir, "daemon.sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		ws2 := workspace(t, rt, none(), "")
		if r := sh(t, rt, ws2, "ls -A /run; test -e "+filepath.Join(sockDir, "daemon.sock")+" && echo visible"); strings.Contains(r.stdout, "visible") || strings.Contains(r.stdout, "corral-test-") {
			t.Errorf("the host's /run is visible: %q", r.stdout)
		}
	}
	// As root, commands run as the workspace's own unprivileged uid: root's
	// files stay unreadable, and the workspace's files are its own.
	if strings.Contains(rt.Capabilities().Isolation, "unprivileged uid") {
		r := sh(t, rt, ws, "id -u; cat /etc/shadow; stat -c %u . f")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 3 || lines[0] == "0" || lines[1] != lines[0] || lines[2] != lines[0] || !strings.Contains(r.stderr, "Permission denied") {
			t.Errorf("uid separation: stdout %q stderr %q", r.stdout, r.stderr)
		}
		if r := sh(t, rt, other, "id -u"); strings.TrimSpace(r.stdout) == lines[0] {
			t.Errorf("two workspaces run as the same uid %s", lines[0])
		}
	}
	// A symlink out of the workspace is no working directory.
	if err := os.Symlink("/", filepath.Join(dirOf(t, rt, ws), "out")); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Exec(context.Background(), ws, runtime.ExecSpec{Argv: []string{"pwd"}, Cwd: "out/etc"})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Code(err) != "path_escape" {
		t.Errorf("Exec with Cwd through a symlink to /: %v", err)
	}
}

func dirOf(t *testing.T, rt runtime.Runtime, id string) string {
	t.Helper()
	st, err := rt.Inspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return st.Detail["dir"]
}

// A second driver on the same DataDir, as after a server restart, finds
// running workspaces and runs commands in them; nothing is restarted.
func TestAdoptAfterRestart(t *testing.T) {
	dir := t.TempDir()
	first := open(t, dir)
	ws := workspace(t, first, none(), "")
	running := workspace(t, first, none(), "")
	sh(t, first, running, "echo before > f; (sleep 1000 >/dev/null 2>&1 &)")
	stopped := workspace(t, first, none(), "")
	ctx := context.Background()
	if err := first.Stop(ctx, stopped); err != nil {
		t.Fatal(err)
	}
	before, err := first.Inspect(ctx, running)
	if err != nil {
		t.Fatal(err)
	}

	second := open(t, dir)
	list, err := second.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]runtime.State{}
	for _, st := range list {
		states[st.ID] = st.State
	}
	if states[ws] != runtime.StateRunning || states[running] != runtime.StateRunning || states[stopped] != runtime.StateStopped || len(states) != 3 {
		t.Errorf("List after restart: %v", states)
	}
	after, err := second.Inspect(ctx, running)
	if err != nil || after.Detail["pid"] != before.Detail["pid"] || !after.StartedAt.Equal(before.StartedAt) {
		t.Errorf("Inspect after restart = %+v, %v; before %+v", after, err, before)
	}
	if r := sh(t, second, running, "cat f; ps -o comm | grep -c sleep"); r.stdout != "before\n1\n" {
		t.Errorf("exec after restart: %+v %q %q", r.ExitResult, r.stdout, r.stderr)
	}
	// The adopted workspace stops for the new driver too, processes and all.
	if err := second.Stop(ctx, running); err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(before.Detail["pid"])
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(b), ") Z") {
		t.Errorf("supervisor %d still alive after Stop: %s", pid, b)
	}
	// A server with another ID sees none of them.
	other, err := process.New(runtime.Config{DataDir: dir, ServerID: "other", InitPath: initPath(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if l, err := other.List(ctx); err != nil || len(l) != 0 {
		t.Errorf("another server lists %v, %v", l, err)
	}
	if _, err := other.Inspect(ctx, ws); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("another server inspects %s: %v", ws, err)
	}
}

// helperDirEnv makes TestHelperServer act as a server process that starts a
// workspace and exits without stopping it, as a crashing server would.
const helperDirEnv = "CORRAL_PROCESS_TEST_SERVER_DIR"

func TestHelperServer(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("helper for TestSurvivesServerExit")
	}
	rt, err := process.New(runtime.Config{DataDir: dir, ServerID: "test", InitPath: initPath(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := rt.Create(ctx, runtime.Spec{ID: "ws_pt_survivor", Policy: none()}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, "ws_pt_survivor"); err != nil {
		t.Fatal(err)
	}
	if r := sh(t, rt, "ws_pt_survivor", "echo kept > f; (sleep 1000 >/dev/null 2>&1 &)"); r.ExitCode != 0 {
		t.Fatalf("%+v %q", r.ExitResult, r.stderr)
	}
	os.Exit(0) // no cleanup: the server is gone
}

// Workspaces outlive the server process that started them, and the next
// server adopts them.
func TestSurvivesServerExit(t *testing.T) {
	if os.Getenv(helperDirEnv) != "" {
		t.Skip("in the helper")
	}
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run", "^TestHelperServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, initEnv+"="+initPath(t))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper server: %v\n%s", err, out)
	}
	rt := open(t, dir)
	ctx := context.Background()
	t.Cleanup(func() {
		if err := rt.Remove(context.Background(), "ws_pt_survivor"); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	st, err := rt.Inspect(ctx, "ws_pt_survivor")
	if err != nil || st.State != runtime.StateRunning {
		t.Fatalf("after the server exited: %+v, %v", st, err)
	}
	if r := sh(t, rt, "ws_pt_survivor", "cat f; ps -o comm | grep -c sleep"); r.stdout != "kept\n1\n" {
		t.Errorf("adopted workspace: %+v %q %q", r.ExitResult, r.stdout, r.stderr)
	}
}

// Remove leaves nothing behind: no processes, no cgroups, no directory.
func TestRemoveLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	rt := open(t, dir)
	p := none()
	p.Limits.Memory, p.Limits.Pids = 64<<20, 100
	ws := workspace(t, rt, p, "")
	sh(t, rt, ws, "(sleep 1000 >/dev/null 2>&1 &) ; true")
	st, _ := rt.Inspect(context.Background(), ws)
	pid, _ := strconv.Atoi(st.Detail["pid"])
	if err := rt.Remove(context.Background(), ws); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(b), ") Z") {
		t.Errorf("supervisor still alive: %s", b)
	}
	for _, c := range []string{"memory", "pids", "cpu"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, "corral", ws)); err == nil {
			t.Errorf("cgroup %s/corral/%s left behind", c, ws)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "workspaces", ws)); err == nil {
		t.Errorf("workspace directory left behind")
	}
}

func TestCreateRefusesWhatItCannotEnforce(t *testing.T) {
	rt := open(t, "")
	err := rt.Create(context.Background(), runtime.Spec{ID: "BAD ID", Policy: none()})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Create with a bad ID: %v", err)
	}
	err = rt.Create(context.Background(), runtime.Spec{ID: "ws_pt_noproxy", Policy: policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist}}})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Create allowlist without a proxy socket: %v", err)
	}
}

func TestCPULimitThrottles(t *testing.T) {
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.CPU, "cpu")
	if !strings.Contains(rt.Capabilities().Isolation, "cgroup v1") {
		t.Skip("reads cgroup v1 files")
	}
	p := none()
	p.Limits.CPUs = 0.1
	ws := workspace(t, rt, p, "")
	// The command reads its own cgroup's quota and throttling count.
	r := sh(t, rt, ws, `d=/sys/fs/cgroup/cpu$(grep ':cpu,\|:cpu:' /proc/self/cgroup | cut -d: -f3)
		cat $d/cpu.cfs_quota_us
		i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done
		grep nr_throttled $d/cpu.stat`)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || lines[0] != "10000" || lines[1] == "nr_throttled 0" {
		t.Errorf("cpu limit 0.1: %+v stdout %q stderr %q", r.ExitResult, r.stdout, r.stderr)
	}
}

func TestRemovePath(t *testing.T) {
	rt := open(t, "")
	rm, ok := rt.(runtime.PathRemover)
	if !ok {
		t.Fatal("the process driver does not implement runtime.PathRemover")
	}
	ws := workspace(t, rt, none(), "")
	sh(t, rt, ws, "mkdir -p d/e && echo x > d/e/f && echo y > keep && ln -s /usr toroot && ln -s keep link")
	ctx := context.Background()
	for _, p := range []string{"d", "link", "toroot", "missing"} {
		if err := rm.RemovePath(ctx, ws, p); err != nil {
			t.Errorf("RemovePath(%s): %v", p, err)
		}
	}
	if r := sh(t, rt, ws, "ls -A; test -d /usr/bin && echo usr-intact"); r.stdout != "keep\nusr-intact\n" {
		t.Errorf("after RemovePath: %q", r.stdout)
	}
	sh(t, rt, ws, "ln -s /usr toroot")
	for _, p := range []string{"toroot/bin", "../x"} {
		if err := rm.RemovePath(ctx, ws, p); errdefs.Code(err) != "path_escape" {
			t.Errorf("RemovePath(%s): %v, want path_escape", p, err)
		}
	}
	for _, p := range []string{"", "/", "."} {
		if err := rm.RemovePath(ctx, ws, p); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("RemovePath(%q) of the root: %v", p, err)
		}
	}
	if err := rm.RemovePath(ctx, "ws_pt_missing", "x"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("RemovePath in a missing workspace: %v", err)
	}
}

// A timeout also kills a daemon: a process that left the command's session
// and whose parent exited.
func TestTimeoutKillsDaemons(t *testing.T) {
	rt := open(t, "")
	ws := workspace(t, rt, none(), "")
	tok := strconv.Itoa(100000 + os.Getpid()%800000)
	res, err := runtime.Run(context.Background(), rt, ws, runtime.ExecSpec{
		Argv:    []string{"sh", "-c", "(setsid sleep " + tok + " >/dev/null 2>&1 &) ; sleep " + tok},
		Timeout: 300 * time.Millisecond,
	})
	if err != nil || !res.TimedOut {
		t.Fatalf("got %+v, %v; want a timeout", res, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Command lines are NUL-separated: only real sleeps match.
		r := sh(t, rt, ws, "for f in /proc/[0-9]*/cmdline; do cat $f; echo; done 2>/dev/null; true")
		n := strings.Count(r.stdout, "sleep\x00"+tok+"\x00")
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d daemonized sleeps survived the timeout", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stdout and Stderr may be one writer that is not safe for concurrent use.
func TestSharedOutputWriter(t *testing.T) {
	rt := open(t, "")
	ws := workspace(t, rt, none(), "")
	var buf bytes.Buffer
	res, err := runtime.Run(context.Background(), rt, ws, runtime.ExecSpec{
		Argv:   []string{"sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo out$i; echo err$i >&2; done"},
		Stdout: &buf, Stderr: &buf,
	})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	for i := 1; i <= 10; i++ {
		for _, s := range []string{"out", "err"} {
			if !strings.Contains(buf.String(), fmt.Sprintf("%s%d\n", s, i)) {
				t.Errorf("output lacks %s%d: %q", s, i, buf.String())
			}
		}
	}
}

// A background process that keeps the command's stdout open does not keep
// Wait from returning once the command has exited.
func TestWaitDoesNotWaitForBackground(t *testing.T) {
	rt := open(t, "")
	ws := workspace(t, rt, none(), "")
	r := sh(t, rt, ws, "sleep 1000 & echo started")
	if r.ExitCode != 0 || r.stdout != "started\n" {
		t.Errorf("got %+v %q", r.ExitResult, r.stdout)
	}
	if got := sh(t, rt, ws, "ps -o comm | grep -c '^sleep'"); got.stdout != "1\n" {
		t.Errorf("the background sleep should still run: %q", got.stdout)
	}
}

// BenchmarkStartStop measures a workspace's Start and Stop (supervisor in
// fresh namespaces, cgroups, confinement).
func BenchmarkStartStop(b *testing.B) {
	rt := open(b, "")
	ctx := context.Background()
	id := "ws_bench_ss_" + strconv.Itoa(os.Getpid())
	p := none()
	p.Limits.Memory, p.Limits.Pids = 256<<20, 100
	if err := rt.Create(ctx, runtime.Spec{ID: id, Policy: p}); err != nil {
		b.Fatal(err)
	}
	defer rt.Remove(ctx, id)
	for b.Loop() {
		if err := rt.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
		if err := rt.Stop(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecTrue compares an Exec of /bin/true in a running workspace
// with a plain fork/exec of it in the same run.
func BenchmarkExecTrue(b *testing.B) {
	rt := open(b, "")
	ctx := context.Background()
	id := "ws_bench_" + strconv.Itoa(os.Getpid())
	if err := rt.Create(ctx, runtime.Spec{ID: id, Policy: none()}); err != nil {
		b.Fatal(err)
	}
	defer rt.Remove(ctx, id)
	if err := rt.Start(ctx, id); err != nil {
		b.Fatal(err)
	}
	b.Run("process", func(b *testing.B) {
		for b.Loop() {
			res, err := runtime.Run(ctx, rt, id, runtime.ExecSpec{Argv: []string{"/bin/true"}})
			if err != nil || res.ExitCode != 0 {
				b.Fatal(res, err)
			}
		}
	})
	b.Run("process-with-output", func(b *testing.B) {
		for b.Loop() {
			out := runtime.NewOutput(0)
			res, err := runtime.Run(ctx, rt, id, runtime.ExecSpec{Argv: []string{"/bin/true"}, Stdout: out, Stderr: out})
			if err != nil || res.ExitCode != 0 {
				b.Fatal(res, err)
			}
		}
	})
	b.Run("fork-exec", func(b *testing.B) {
		for b.Loop() {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A command running as the workspace's unprivileged uid cannot become root
// again through a setuid-root program of the host (no_new_privs): with
// root's capabilities it could read root's files and write raw devices,
// which a read-only mount does not protect.
func TestNoPrivilegeGainThroughSetuid(t *testing.T) {
	rt := open(t, "")
	if !strings.Contains(rt.Capabilities().Isolation, "unprivileged uid") {
		t.Skipf("commands do not run as an unprivileged uid here: %s", rt.Capabilities().Isolation)
	}
	// A setuid-root copy of id, where the sandbox can see it: outside
	// /tmp (private in the sandbox) and the driver's data directory.
	dir, err := os.MkdirTemp("/var/tmp", "corral-suid-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	idPath, err := exec.LookPath("id")
	if err != nil {
		t.Skip(err)
	}
	b, err := os.ReadFile(idPath)
	if err != nil {
		t.Fatal(err)
	}
	suid := filepath.Join(dir, "id")
	if err := os.WriteFile(suid, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(suid, 0o4755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	// The host itself honours the setuid bit here, or the test says nothing.
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", suid, "-u").Output()
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Skipf("setuid programs do not work in %s here (%v, %q)", dir, err, out)
	}
	ws := workspace(t, rt, none(), "")
	r := sh(t, rt, ws, suid+" -u; "+suid+" -ru")
	lines := strings.Fields(r.stdout)
	if len(lines) != 2 || lines[1] == "0" {
		t.Fatalf("id in the workspace: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if lines[0] == "0" {
		t.Errorf("a setuid-root program made the workspace's uid %s root again", lines[1])
	}
}

// Commands that run as root (uid_separation=false) do not reach the host's
// block devices: a read-only mount does not stop writes to device nodes, so
// /dev holds only the harmless ones.
func TestDevHoldsNoHostDevices(t *testing.T) {
	rt := openWith(t, "", map[string]string{"uid_separation": "false"})
	if !strings.Contains(rt.Capabilities().Isolation, "pid") {
		t.Skipf("no namespaces here: %s", rt.Capabilities().Isolation)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: commands run as root only when the server is root")
	}
	ws := workspace(t, rt, none(), "")
	r := sh(t, rt, ws, "for f in /dev/* /dev/*/*; do test -b $f && echo block $f; done; "+
		"test -e /dev/loop-control && echo loop-control; echo x > /dev/null && echo null-ok; "+
		"head -c 4 /dev/zero | wc -c; head -c 4 /dev/urandom | wc -c")
	if r.stdout != "null-ok\n4\n4\n" {
		t.Errorf("/dev in the workspace: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

// An allowlist workspace reaches its own egress proxy socket only, not the
// sockets of other workspaces next to it (which carry their allowlists).
func TestAllowlistReachesOnlyItsOwnProxy(t *testing.T) {
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.SupportsNetwork(policy.NetworkAllowlist), "network allowlist")
	if !strings.Contains(rt.Capabilities().Isolation, "pid") {
		t.Skipf("no namespaces here: %s", rt.Capabilities().Isolation)
	}
	// Outside /tmp, which is private in the sandbox anyway.
	dir, err := os.MkdirTemp("/var/tmp", "cp-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	proxy := &policy.Proxy{Dir: dir}
	t.Cleanup(func() { proxy.Shutdown(context.Background()) })
	pol := policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"example.com"}}}
	mine, err := proxy.Open("ws_pt_own_"+strconv.Itoa(os.Getpid()), pol.Network.AllowedHosts)
	if err != nil {
		t.Fatal(err)
	}
	other, err := proxy.Open("ws_pt_other_"+strconv.Itoa(os.Getpid()), []string{"0.0.0.0/0"})
	if err != nil {
		t.Fatal(err)
	}
	ws := workspace(t, rt, pol, mine)
	r := sh(t, rt, ws, fmt.Sprintf("test -S %s && echo own; test -e %s && echo other; ls %s", mine, other, dir))
	if r.stdout != "own\n"+filepath.Base(filepath.Dir(mine))+"\n" {
		t.Errorf("proxy sockets seen from the workspace: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

// Option hide covers more host directories (the server's data directory,
// with every workspace's proxy socket) in every sandbox.
func TestOptionHide(t *testing.T) {
	dir, err := os.MkdirTemp("/var/tmp", "corral-hide-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rt := openWith(t, "", map[string]string{"hide": dir})
	if !strings.Contains(rt.Capabilities().Isolation, "pid") {
		t.Skipf("no namespaces here: %s", rt.Capabilities().Isolation)
	}
	ws := workspace(t, rt, none(), "")
	if r := sh(t, rt, ws, "ls -A "+dir+"; echo home > f && cat f"); r.stdout != "home\n" {
		t.Errorf("hidden directory seen from the workspace: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if _, err := process.New(runtime.Config{DataDir: t.TempDir(), InitPath: initPath(t), Options: map[string]string{"hide": "relative"}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("hide=relative: %v", err)
	}
}

// Commands that run as root (uid_separation=false) cannot write the host's
// kernel settings through /proc: core_pattern or kernel.modprobe name a
// program the kernel runs as the host's root, and sysrq-trigger reboots it.
// (access(2) is asked, nothing is written.)
func TestProcKernelSettingsReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: commands run as root only when the server is root")
	}
	rt := openWith(t, "", map[string]string{"uid_separation": "false"})
	if !strings.Contains(rt.Capabilities().Isolation, "pid") {
		t.Skipf("no namespaces here: %s", rt.Capabilities().Isolation)
	}
	ws := workspace(t, rt, none(), "")
	r := sh(t, rt, ws, "id -u; for f in /proc/sys/kernel/core_pattern /proc/sys/kernel/modprobe /proc/sysrq-trigger /proc/sys/vm/drop_caches; do "+
		"test -e $f || continue; test -w $f && echo writable $f; done; cat /proc/sys/kernel/ostype; echo $$ >/dev/null; test -r /proc/self/status && echo proc-ok")
	if r.stdout != "0\nLinux\nproc-ok\n" {
		t.Errorf("/proc in the workspace: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

// A server data directory that only root can enter (0700, as `corral
// serve` makes it) does not turn uid separation off when it is hidden in
// sandboxes (option hide): inside, a fresh tmpfs stands in its place.
func TestUIDSeparationUnderPrivateHiddenDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	top, err := os.MkdirTemp("/var/tmp", "corral-priv-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.Chmod(top, 0o700); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(top, "runtime", "process")
	if err := os.MkdirAll(dataDir, 0o711); err != nil {
		t.Fatal(err)
	}
	if iso := openWith(t, dataDir, nil).Capabilities().Isolation; !strings.Contains(iso, "not searchable") && !strings.Contains(iso, "no namespaces") {
		t.Logf("without hide: %s", iso)
	}
	rt := openWith(t, dataDir, map[string]string{"hide": top})
	iso := rt.Capabilities().Isolation
	if !strings.Contains(iso, "pid") {
		t.Skipf("no namespaces here: %s", iso)
	}
	if !strings.Contains(iso, "unprivileged uid") {
		t.Fatalf("uid separation is off: %s", iso)
	}
	ws := workspace(t, rt, none(), "")
	r := sh(t, rt, ws, "id -u; echo hi > f && cat f; ls -A "+top)
	lines := strings.Split(r.stdout, "\n")
	if len(lines) < 2 || lines[0] == "0" || lines[1] != "hi" {
		t.Errorf("in the workspace: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

// TestSweepAtStart: the temporaries of an upload a killed server left are
// removed when the next driver opens on the same data directory, without
// any file operation, and a file of the same shape that is not a temporary of
// an earlier server stays.
func TestSweepAtStart(t *testing.T) {
	dir := t.TempDir()
	first := open(t, dir)
	ws := workspace(t, first, none(), "")
	home := filepath.Join(dir, "workspaces", ws, "home")
	stale := filepath.Join(home, "sub", tarfs.TempPrefix+"000000000000-00000000deadbeef")
	kept := filepath.Join(home, "sub", "keep.txt")
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{stale, kept} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, dir) // sweeps in the background
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, err := os.Stat(stale)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stale temporary still there 30s after a restart: %v", err)
		}
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("a workspace file went with the sweep: %v", err)
	}
}
