package runtimetest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// RunNetwork checks, by trying to get out, that rt enforces the network modes
// as DESIGN.md says, whatever the driver:
//
//   - none: nothing outside the sandbox is reachable;
//   - allowlist: the allowed host is reachable through the forwarder on
//     runtime.ProxyListenAddr and the egress proxy (plain HTTP and CONNECT),
//     any other host is refused with 403 and reported, and a direct
//     connection that bypasses the proxy has no route;
//   - open: the test host, on a public-looking address in a network
//     namespace the suite makes, is reachable directly.
//
// The target is an HTTP server on one of this machine's own addresses that
// the driver's open network can reach (the address of the default route's
// interface, not loopback, which a container's bridge cannot reach): what
// a sandbox must not reach directly. The same server also listens on a
// private host (internal/nettest.StartPrivateHost): another machine at a
// private address, which the operator's AllowPrivate lets an allowlist
// reach (this machine's own addresses it never does). A policy.Proxy served
// by the test, with a resolver that maps allowed.test and other.test to
// the private host, plays the server's egress proxy.
//
// Commands run with busybox (wget without -T, nc), present in the test image
// and on the host. A mode the driver's Capabilities do not offer is skipped,
// with the driver's reason.
func RunNetwork(t *testing.T, rt runtime.Runtime, image string) {
	n := &netSuite{rt: rt, image: image}
	n.target = startTarget(t)
	n.proxy, n.denials = startProxy(t, n.target.up.Addr())
	t.Logf("target %s (%s), upstream %s", n.target.addr, n.target.iface, n.target.up)

	t.Run("None", n.testNone)
	t.Run("Allowlist", n.testAllowlist)
	t.Run("Open", n.testOpen)
}

type netSuite struct {
	rt      runtime.Runtime
	image   string
	target  *target
	proxy   *policy.Proxy
	denials *denialLog
}

// target is an HTTP server that answers every request with a marker and
// counts what reached it.
type target struct {
	addr   netip.AddrPort // on this machine
	up     netip.AddrPort // on a private host, for the proxy
	iface  string
	marker string
	mu     sync.Mutex
	hosts  []string // Host of every request received
}

func (tg *target) seen() []string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]string(nil), tg.hosts...)
}

// startTarget listens on this machine's address on the default route's
// interface (or, without a default route, any non-loopback IPv4 address).
func startTarget(t *testing.T) *target {
	t.Helper()
	addr, iface, err := hostAddr()
	if err != nil {
		t.Fatalf("network suite: %v", err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatalf("network suite: listen on %s: %v", addr, err)
	}
	tg := &target{
		addr:   netip.MustParseAddrPort(ln.Addr().String()),
		iface:  iface,
		marker: "corral-net-target-" + randHex(6),
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tg.mu.Lock()
			tg.hosts = append(tg.hosts, r.Host)
			tg.mu.Unlock()
			fmt.Fprintln(w, tg.marker)
		}),
		ReadHeaderTimeout: wait,
	}
	go srv.Serve(ln)
	upLn := nettest.StartPrivateHost(t).Listen(t)
	tg.up = netip.MustParseAddrPort(upLn.Addr().String())
	go srv.Serve(upLn)
	t.Cleanup(func() { srv.Close() })
	return tg
}

// hostAddr finds an IPv4 address of this machine that sandboxes on an open
// network can reach: the one on the default route's interface.
func hostAddr() (netip.Addr, string, error) {
	ifname := ""
	if f, err := os.Open("/proc/net/route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 2 && fields[1] == "00000000" {
				ifname = fields[0]
				break
			}
		}
		f.Close()
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("list interfaces: %w", err)
	}
	var fallback netip.Addr
	var fallbackIf string
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err != nil || !p.Addr().Is4() || p.Addr().IsLinkLocalUnicast() {
				continue
			}
			if ifc.Name == ifname {
				return p.Addr(), ifc.Name, nil
			}
			if !fallback.IsValid() {
				fallback, fallbackIf = p.Addr(), ifc.Name
			}
		}
	}
	if fallback.IsValid() {
		return fallback, fallbackIf, nil
	}
	return netip.Addr{}, "", fmt.Errorf("no non-loopback IPv4 address on this machine to serve the target on")
}

// denialLog keeps what the proxy reported.
type denialLog struct {
	mu sync.Mutex
	ds map[string][]policy.Denial // by workspace
}

func (d *denialLog) add(ws string, x policy.Denial) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ds[ws] = append(d.ds[ws], x)
}

func (d *denialLog) of(ws string) []policy.Denial {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]policy.Denial(nil), d.ds[ws]...)
}

// startProxy serves the egress proxy from a directory that a rootless
// container's user can traverse.
func startProxy(t *testing.T, addr netip.Addr) (*policy.Proxy, *denialLog) {
	t.Helper()
	dir, err := os.MkdirTemp("", "corral-net-") // short: socket paths max 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &denialLog{ds: map[string][]policy.Denial{}}
	p := &policy.Proxy{
		Dir:      dir,
		Resolver: fixedResolver{"allowed.test": addr, "other.test": addr},
		// The upstream is on a private address: the operator's
		// AllowPrivate is what lets an allowlist reach it.
		AllowPrivate: true,
		OnDeny:       d.add,
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		p.Shutdown(ctx)
	})
	return p, d
}

type fixedResolver map[string]netip.Addr

func (r fixedResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return []netip.Addr{a}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// workspace creates and starts a workspace in network mode m (allowed hosts
// for allowlist), with the limits rt can enforce; removed when t ends. It
// skips t if rt cannot enforce m here.
func (n *netSuite) workspace(t *testing.T, m policy.Mode, allowed ...string) string {
	t.Helper()
	return n.workspaceLabeled(t, m, map[string]string{"test": "runtimetest-network"}, allowed...)
}

// workspaceLabeled is workspace with the given labels.
func (n *netSuite) workspaceLabeled(t *testing.T, m policy.Mode, labels map[string]string, allowed ...string) string {
	t.Helper()
	caps := n.rt.Capabilities().Policy
	cfg := policy.DefaultConfig()
	cfg.Defaults, _ = caps.Enforceable(cfg.Defaults)
	p, err := cfg.Resolve(policy.Policy{Network: policy.Network{Mode: m, AllowedHosts: allowed}})
	if err != nil {
		t.Fatalf("resolve policy: %v", err)
	}
	if err := policy.Check(n.rt.Name(), p, caps); err != nil {
		t.Skipf("driver cannot enforce this here: %v", err)
	}
	id := "ws_net_" + randHex(5)
	spec := runtime.Spec{ID: id, Image: n.image, Policy: p, Labels: labels}
	if m == policy.NetworkAllowlist {
		sock, err := n.proxy.Open(id, p.Network.AllowedHosts)
		if err != nil {
			t.Fatalf("open proxy for %s: %v", id, err)
		}
		t.Cleanup(func() { n.proxy.Close(id) })
		spec.ProxySocket = sock
	}
	ctx := ctxT(t)
	if err := n.rt.Create(ctx, spec); err != nil {
		t.Fatalf("Create(%s, network %s): %v", id, m, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.rt.Remove(ctx, id); err != nil {
			t.Errorf("cleanup: Remove(%s): %v", id, err)
		}
	})
	if err := n.rt.Start(ctx, id); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	return id
}

// attempt runs a command that tries to reach something; the timeout only
// keeps a packet-dropping network from hanging the suite.
func (n *netSuite) attempt(t *testing.T, id, stdin string, argv ...string) result {
	t.Helper()
	var out, errb syncBuffer
	spec := runtime.ExecSpec{Argv: argv, Timeout: wait, Stdout: &out, Stderr: &errb}
	if stdin != "" {
		spec.Stdin = strings.NewReader(stdin)
	}
	res, err := runtime.Run(ctxT(t), n.rt, id, spec)
	if err != nil {
		t.Fatalf("exec %q in %s: %v", argv, id, err)
	}
	return result{res, out.String(), errb.String()}
}

func (n *netSuite) reached(r result) bool {
	return strings.Contains(r.Stdout, n.target.marker)
}

// wget fetches url with busybox wget (which reads http_proxy from the
// environment; -Y off ignores it).
func (n *netSuite) wget(t *testing.T, id, url string, useProxy bool) result {
	t.Helper()
	argv := []string{"busybox", "wget", "-q", "-O-"}
	if !useProxy {
		argv = append(argv, "-Y", "off")
	}
	return n.attempt(t, id, "", append(argv, url)...)
}

// nc sends a raw HTTP/1.0 request straight to the target's address.
func (n *netSuite) nc(t *testing.T, id string) result {
	t.Helper()
	return n.attempt(t, id, "GET / HTTP/1.0\r\nHost: direct\r\n\r\n",
		"busybox", "nc", n.target.addr.Addr().String(), strconv.Itoa(int(n.target.addr.Port())))
}

// mustNotReach fails t if r reached the target or the target saw new
// requests since before.
func (n *netSuite) mustNotReach(t *testing.T, what string, r result, before int) {
	t.Helper()
	if n.reached(r) || r.ExitCode == 0 {
		t.Errorf("%s: reached the target (exit %d)\nstdout: %s\nstderr: %s", what, r.ExitCode, r.Stdout, r.Stderr)
	}
	if seen := n.target.seen(); len(seen) != before {
		t.Errorf("%s: the target received requests %q", what, seen[before:])
	}
}

func (n *netSuite) testNone(t *testing.T) {
	id := n.workspace(t, policy.NetworkNone)
	url := "http://" + n.target.addr.String() + "/"
	before := len(n.target.seen())
	n.mustNotReach(t, "wget "+url, n.wget(t, id, url, true), before)
	n.mustNotReach(t, "nc "+n.target.addr.String(), n.nc(t, id), before)
	// Nothing listens on the forwarder's address without allowlist.
	r := n.wget(t, id, "http://allowed.test:"+strconv.Itoa(int(n.target.addr.Port()))+"/", true)
	n.mustNotReach(t, "wget allowed.test (no proxy in mode none)", r, before)
}

func (n *netSuite) testAllowlist(t *testing.T) {
	port := strconv.Itoa(int(n.target.up.Port()))
	allowed := "allowed.test:" + port
	id := n.workspace(t, policy.NetworkAllowlist, allowed)

	// The allowed host, by name, through HTTP_PROXY: the driver set the
	// proxy environment and runs the forwarder.
	before := len(n.target.seen())
	r := n.wget(t, id, "http://"+allowed+"/", true)
	if r.ExitCode != 0 || !n.reached(r) {
		t.Fatalf("wget http://%s/ through the proxy: exit %d\nstdout: %s\nstderr: %s", allowed, r.ExitCode, r.Stdout, r.Stderr)
	}
	if seen := n.target.seen(); len(seen) != before+1 || seen[before] != allowed {
		t.Errorf("target saw %q, want one request for %s", seen[before:], allowed)
	}

	// CONNECT through the forwarder by hand, with the tunnelled request
	// sent right behind it.
	r = n.attempt(t, id, "CONNECT "+allowed+" HTTP/1.1\r\nHost: "+allowed+"\r\n\r\nGET / HTTP/1.0\r\nHost: "+allowed+"\r\n\r\n",
		"busybox", "nc", hostOf(runtime.ProxyListenAddr), portOf(runtime.ProxyListenAddr))
	if !strings.Contains(r.Stdout, " 200 ") || !n.reached(r) {
		t.Errorf("CONNECT %s through %s: exit %d\nstdout: %s\nstderr: %s", allowed, runtime.ProxyListenAddr, r.ExitCode, r.Stdout, r.Stderr)
	}

	// Another name for the same address and port is refused, and reported;
	// so is this machine's address, not listed.
	before = len(n.target.seen())
	for _, host := range []string{"other.test:" + port, n.target.addr.String()} {
		r = n.wget(t, id, "http://"+host+"/", true)
		if r.ExitCode == 0 || n.reached(r) || !strings.Contains(r.Stdout+r.Stderr, "403") {
			t.Errorf("wget http://%s/: exit %d, want a 403 refusal\nstdout: %s\nstderr: %s", host, r.ExitCode, r.Stdout, r.Stderr)
		}
	}
	if seen := n.target.seen(); len(seen) != before {
		t.Errorf("refused requests reached the target: %q", seen[before:])
	}
	ds := n.denials.of(id)
	if len(ds) != 2 || ds[0].Host != "other.test" || ds[1].Host != n.target.addr.Addr().String() ||
		ds[0].Reason != policy.DenyNotAllowed || ds[0].Port != int(n.target.up.Port()) {
		t.Errorf("proxy reported %+v, want other.test and %s refused as %s", ds, n.target.addr.Addr(), policy.DenyNotAllowed)
	}

	// Bypassing the proxy: no route out.
	url := "http://" + n.target.addr.String() + "/"
	n.mustNotReach(t, "wget -Y off "+url, n.wget(t, id, url, false), before)
	n.mustNotReach(t, "nc "+n.target.addr.String(), n.nc(t, id), before)
	upURL := "http://" + n.target.up.String() + "/"
	n.mustNotReach(t, "wget -Y off "+upURL, n.wget(t, id, upURL, false), before)
}

// testOpen reaches the test host, on a public-looking address: an open
// network reaches the internet, not this machine (RunIsolation checks that).
func (n *netSuite) testOpen(t *testing.T) {
	th := startTestHost(t)
	id := n.workspace(t, policy.NetworkOpen)
	url := th.httpURL()
	before := th.hits.Load()
	r := n.wget(t, id, url, false)
	if r.ExitCode != 0 || !strings.Contains(r.Stdout, th.marker) {
		t.Fatalf("wget %s on an open network: exit %d\nstdout: %s\nstderr: %s", url, r.ExitCode, r.Stdout, r.Stderr)
	}
	if got := th.hits.Load() - before; got != 1 {
		t.Errorf("test host saw %d requests, want one", got)
	}
	if ds := n.denials.of(id); len(ds) != 0 {
		t.Errorf("the proxy was involved in mode open: %+v", ds)
	}
}

func hostOf(hostport string) string { h, _, _ := net.SplitHostPort(hostport); return h }
func portOf(hostport string) string { _, p, _ := net.SplitHostPort(hostport); return p }
