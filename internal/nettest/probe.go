package nettest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/runtime"
)

// The probes run in a workspace of the image the engine suites use
// (busybox): each target is tried in the background with wget under
// `timeout`, and those that answer with the marker are printed. The timeout
// only bounds a probe whose packets are dropped: a reachable target on this
// machine answers at once, which the callers' positive controls show.

// Port is where ServeMarker listens in a workspace.
const Port = 7070

// sh runs script in workspace id and returns its output.
func sh(t testing.TB, rt runtime.Runtime, id, script string) (runtime.ExitResult, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := runtime.NewOutput(0)
	res, err := runtime.Run(ctx, rt, id, runtime.ExecSpec{Argv: []string{"sh", "-c", script}, Stdout: out, Stderr: out})
	if err != nil {
		t.Fatalf("run %q in %s: %v", script, id, err)
	}
	return res, out.String()
}

// ServeMarker starts busybox httpd in workspace id on all its addresses,
// port Port, serving marker at /m.
func ServeMarker(t testing.TB, rt runtime.Runtime, id, marker string) {
	t.Helper()
	res, out := sh(t, rt, id, fmt.Sprintf("mkdir -p /tmp/www && echo %s > /tmp/www/m && httpd -p %d -h /tmp/www", marker, Port))
	if res.ExitCode != 0 {
		t.Fatalf("start httpd in %s: exit %d: %s", id, res.ExitCode, out)
	}
}

// Probe tries every target (host:port) from workspace id, each for at most
// seconds, and returns those that answered with marker.
func Probe(t testing.TB, rt runtime.Runtime, id, marker string, seconds int, targets ...string) []string {
	t.Helper()
	var b strings.Builder
	for _, tg := range targets {
		fmt.Fprintf(&b, "(timeout %d wget -q -O- -Y off http://%s/m 2>/dev/null | grep -q %s && echo REACHED %s) &\n", seconds, tg, marker, tg)
	}
	b.WriteString("wait\n")
	_, out := sh(t, rt, id, b.String())
	var reached []string
	for _, l := range strings.Split(out, "\n") {
		if x, ok := strings.CutPrefix(l, "REACHED "); ok {
			reached = append(reached, x)
		}
	}
	return reached
}

// Addrs returns workspace id's IPv4 address (the first that is not
// loopback) and its default gateway, as the sandbox sees them.
func Addrs(t testing.TB, rt runtime.Runtime, id string) (addr, gateway netip.Addr) {
	t.Helper()
	_, out := sh(t, rt, id, "ip -4 -o addr show; ip -4 route show default")
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 4 && f[2] == "inet" && !addr.IsValid():
			if p, err := netip.ParsePrefix(f[3]); err == nil && !p.Addr().IsLoopback() {
				addr = p.Addr()
			}
		case len(f) >= 3 && f[0] == "default" && f[1] == "via":
			gateway, _ = netip.ParseAddr(f[2])
		}
	}
	if !addr.IsValid() || !gateway.IsValid() {
		t.Fatalf("workspace %s: no IPv4 address or default gateway in\n%s", id, out)
	}
	t.Logf("workspace %s: address %s, gateway %s", id, addr, gateway)
	return addr, gateway
}

// HostTargets serves marker over HTTP on 0.0.0.0 and on 127.0.0.1 until t
// ends, and returns every host:port a sandbox could try to reach them by:
// each of this machine's IPv4 addresses, and the extra addresses given
// (a sandbox's gateway, say), with each port.
func HostTargets(t testing.TB, marker string, extra ...netip.Addr) []string {
	t.Helper()
	var ports []uint16
	for _, addr := range []string{"0.0.0.0:0", "127.0.0.1:0"} {
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{
			Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, marker) }),
			ReadHeaderTimeout: time.Minute,
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		ports = append(ports, uint16(ln.Addr().(*net.TCPAddr).Port))
	}
	addrs := append([]netip.Addr(nil), extra...)
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ifaddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			addrs = append(addrs, p.Addr())
		}
	}
	var targets []string
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		if seen[a] {
			continue
		}
		seen[a] = true
		for _, port := range ports {
			targets = append(targets, netip.AddrPortFrom(a, port).String())
		}
	}
	return targets
}
