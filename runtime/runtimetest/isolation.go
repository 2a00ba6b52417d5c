package runtimetest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// RunIsolation checks, by trying, that rt's network mode open reaches the
// internet and nothing else, as issue 7 and DESIGN.md require:
//
//   - two open workspaces of two users: a TCP listener on all of B's
//     addresses and an abstract unix socket in B are unreachable from A
//     (on each of B's addresses, and on 127.0.0.1), while B reaches both
//     itself, so the listener is known to work;
//   - a listener on this machine's 127.0.0.1 and one on all its addresses
//     are unreachable from A on every address the machine has (loopback,
//     the default route's interface, docker and podman bridges, the
//     drivers' own gateways...), and receive no connection;
//   - a test host in a network namespace of its own with a public-looking
//     address (203.0.113.10) is reachable from open, and not from none;
//     its link-local (169.254.77.10) and private (10.255.77.10) addresses,
//     routed from this machine the same way, are not reachable from open.
//
// The probes run netprobe (internal/testbin/netprobe), built static and
// copied into each workspace with CopyIn: busybox has no abstract sockets.
// It needs root (the test host); without it t is skipped. A driver that
// cannot enforce open here is skipped with its reason.
func RunIsolation(t *testing.T, rt runtime.Runtime, image string) {
	n := &netSuite{rt: rt, image: image}
	th := startTestHost(t)
	probe, err := os.ReadFile(testbin.NetProbe(t))
	if err != nil {
		t.Fatal(err)
	}
	hostLoop := listenHost(t, "127.0.0.1:0")
	hostAll := listenHost(t, ":0")

	a := n.isoWorkspace(t, policy.NetworkOpen, "alice", probe)
	b := n.isoWorkspace(t, policy.NetworkOpen, "bob", probe)

	// B listens on every address and on an abstract socket.
	port := strconv.Itoa(20000 + int(time.Now().UnixNano()%20000))
	abstract := "unix:@corral-iso-" + randHex(6)
	n.background(t, b, "./netprobe", "listen", port, strings.TrimPrefix(abstract, "unix:@"))
	var bAddrs []string
	for _, line := range strings.Fields(n.probe(t, b, "addrs")) {
		if a, err := netip.ParseAddr(line); err == nil && !a.IsLinkLocalUnicast() {
			bAddrs = append(bAddrs, a.String())
		}
	}
	if len(bAddrs) == 0 {
		t.Fatalf("workspace %s in mode open has no address", b)
	}
	bTargets := []string{abstract, "tcp:" + net.JoinHostPort("127.0.0.1", port)}
	for _, ad := range bAddrs {
		bTargets = append(bTargets, "tcp:"+net.JoinHostPort(ad, port))
	}

	t.Run("ListenerWorks", func(t *testing.T) {
		for target, res := range n.dial(t, b, bTargets) {
			if !strings.HasPrefix(res, "OK ") {
				t.Errorf("%s from its own workspace: %s", target, res)
			}
		}
	})
	t.Run("OtherWorkspace", func(t *testing.T) {
		for target, res := range n.dial(t, a, bTargets) {
			if !strings.HasPrefix(res, "FAIL ") {
				t.Errorf("workspace %s reached workspace %s's %s: %s", a, b, target, res)
			}
		}
	})
	t.Run("Host", func(t *testing.T) {
		targets := []string{"tcp:" + hostLoop.addr.String()}
		for _, ad := range hostAddrs(t) {
			targets = append(targets, "tcp:"+netip.AddrPortFrom(ad, hostAll.addr.Port()).String())
		}
		for target, res := range n.dial(t, a, targets) {
			if !strings.HasPrefix(res, "FAIL ") {
				t.Errorf("workspace %s reached the host's %s: %s", a, target, res)
			}
		}
		if c := hostLoop.conns.Load() + hostAll.conns.Load(); c != 0 {
			t.Errorf("the host's listeners accepted %d connections from the workspace", c)
		}
	})
	t.Run("PublicHost", func(t *testing.T) {
		res := n.dial(t, a, []string{th.lineTarget()})[th.lineTarget()]
		if !strings.HasPrefix(res, "OK ") || !strings.Contains(res, th.marker) {
			t.Errorf("open workspace %s could not reach the test host %s: %s", a, th.lineTarget(), res)
		}
	})
	t.Run("DeniedRanges", func(t *testing.T) {
		var targets []string
		for _, ad := range testHostDenied {
			target := "tcp:" + netip.AddrPortFrom(ad, testHostLinePort).String()
			targets = append(targets, target)
			// Routed and answering from this machine: what stops the
			// sandbox below is the driver's rules, not a missing route.
			// Reading its answer makes sure it has counted this connection.
			c, err := net.DialTimeout("tcp", strings.TrimPrefix(target, "tcp:"), wait)
			if err != nil {
				t.Fatalf("the test host's %s is not reachable from this machine: %v", ad, err)
			}
			_ = c.SetReadDeadline(time.Now().Add(wait))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err != nil || !strings.Contains(line, th.marker) {
				t.Fatalf("the test host's %s answered %q, %v", ad, line, err)
			}
		}
		before := th.hits.Load()
		for target, res := range n.dial(t, a, targets) {
			if !strings.HasPrefix(res, "FAIL ") {
				t.Errorf("open workspace %s reached %s, in a denied range: %s", a, target, res)
			}
		}
		if got := th.hits.Load() - before; got != 0 {
			t.Errorf("the test host's denied addresses received %d connections from the workspace", got)
		}
	})
	t.Run("PublicHostFromNone", func(t *testing.T) {
		none := n.isoWorkspace(t, policy.NetworkNone, "alice", probe)
		before := th.hits.Load()
		res := n.dial(t, none, []string{th.lineTarget()})[th.lineTarget()]
		if !strings.HasPrefix(res, "FAIL ") || th.hits.Load() != before {
			t.Errorf("workspace %s in mode none reached the test host: %s", none, res)
		}
	})
}

// isoWorkspace creates and starts a workspace of user in mode m with
// netprobe in its root; removed when t ends.
func (n *netSuite) isoWorkspace(t *testing.T, m policy.Mode, user string, probe []byte) string {
	t.Helper()
	id := n.workspaceLabeled(t, m, map[string]string{"test": "runtimetest-isolation", "user": user})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "netprobe", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(probe)), ModTime: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(probe); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.rt.CopyIn(ctxT(t), id, "", &buf); err != nil {
		t.Fatalf("CopyIn netprobe into %s: %v", id, err)
	}
	return id
}

// probe runs netprobe in id and returns its output.
func (n *netSuite) probe(t *testing.T, id string, args ...string) string {
	t.Helper()
	r := n.attempt(t, id, "", append([]string{"./netprobe"}, args...)...)
	if r.ExitCode != 0 {
		t.Fatalf("netprobe %q in %s: exit %d\nstdout: %s\nstderr: %s", args, id, r.ExitCode, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// dial tries each target from id and returns netprobe's verdict per target.
func (n *netSuite) dial(t *testing.T, id string, targets []string) map[string]string {
	t.Helper()
	out := n.probe(t, id, append([]string{"dial"}, targets...)...)
	t.Logf("from %s:\n%s", id, out)
	res := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			res[f[1]] = line
		}
	}
	for _, target := range targets {
		if _, ok := res[target]; !ok {
			t.Fatalf("netprobe dial in %s said nothing of %s:\n%s", id, target, out)
		}
	}
	return res
}

// background starts argv in id and waits until it prints "ready"; it is
// killed when t ends.
func (n *netSuite) background(t *testing.T, id string, argv ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	p, err := n.rt.Exec(ctx, id, runtime.ExecSpec{Argv: argv, Stdout: &out, Stderr: &errb})
	if err != nil {
		cancel()
		t.Fatalf("exec %q in %s: %v", argv, id, err)
	}
	done := make(chan struct{})
	go func() { _, _ = p.Wait(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(wait)
	for !strings.Contains(out.String(), "ready") {
		select {
		case <-done:
			t.Fatalf("%q in %s exited before it was ready\nstdout: %s\nstderr: %s", argv, id, out.String(), errb.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q in %s never became ready\nstdout: %s\nstderr: %s", argv, id, out.String(), errb.String())
		}
	}
}

// hostListener is a TCP listener of the test process, on the host, that
// counts the connections it accepts.
type hostListener struct {
	addr  netip.AddrPort
	conns atomic.Int64
}

func listenHost(t *testing.T, addr string) *hostListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the host's %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	h := &hostListener{addr: netip.MustParseAddrPort(ln.Addr().String())}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			h.conns.Add(1)
			fmt.Fprintln(c, "host-listener")
			c.Close()
		}
	}()
	return h
}

// hostAddrs lists every address of every interface of this machine, but
// IPv6 link-local ones (which need a zone no sandbox shares).
func hostAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err != nil || (p.Addr().Is6() && p.Addr().IsLinkLocalUnicast()) {
				continue
			}
			out = append(out, p.Addr())
		}
	}
	if len(out) == 0 {
		t.Fatal("this machine has no addresses")
	}
	return out
}
