package docker_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/docker"
	"github.com/hashicorp/go-hclog"
)

// The probes below run in a workspace as one shell script: each target is
// tried in the background with busybox wget under `timeout`, and the ones
// that answer with the marker are printed as "REACHED target". The timeout
// only bounds a probe whose packets are dropped; a reachable target on this
// machine answers at once (the positive controls prove the method).

const listenPort = 7070

// serveMarker starts busybox httpd in workspace id on every address,
// serving marker at /m.
func serveMarker(t *testing.T, d *docker.Driver, id, marker string) {
	t.Helper()
	r := sh(t, d, id, fmt.Sprintf("mkdir -p /tmp/www && echo %s > /tmp/www/m && httpd -p %d -h /tmp/www", marker, listenPort))
	if r.ExitCode != 0 {
		t.Fatalf("start httpd in %s: exit %d: %s%s", id, r.ExitCode, r.Stdout, r.Stderr)
	}
}

// probe tries every target (host:port) from workspace id and returns those
// that answered with marker.
func probe(t *testing.T, d *docker.Driver, id, marker string, seconds int, targets ...string) []string {
	t.Helper()
	var b strings.Builder
	for _, tg := range targets {
		fmt.Fprintf(&b, "(timeout %d wget -q -O- -Y off http://%s/m 2>/dev/null | grep -q %s && echo REACHED %s) &\n", seconds, tg, marker, tg)
	}
	b.WriteString("wait\n")
	r := sh(t, d, id, b.String())
	var reached []string
	for _, l := range strings.Split(r.Stdout, "\n") {
		if x, ok := strings.CutPrefix(l, "REACHED "); ok {
			reached = append(reached, x)
		}
	}
	return reached
}

// hostListeners serves marker over HTTP on 0.0.0.0 and on 127.0.0.1, and
// returns every target a sandbox could try to reach them by: each of this
// machine's IPv4 addresses with each port.
func hostListeners(t *testing.T, marker string) []string {
	t.Helper()
	var ports []int
	for _, addr := range []string{"0.0.0.0:0", "127.0.0.1:0"} {
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, marker) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().Is4() || p.Addr().IsLoopback() {
			continue
		}
		for _, port := range ports {
			targets = append(targets, netip.AddrPortFrom(p.Addr(), uint16(port)).String())
		}
	}
	if len(targets) == 0 {
		t.Fatal("this machine has no IPv4 address besides loopback")
	}
	return targets
}

// addrOf is the IPv4 address of workspace id on its (only) network.
func addrOf(t *testing.T, d *docker.Driver, id string) netip.Addr {
	t.Helper()
	st, err := d.Inspect(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	ins, err := engine(t).ContainerInspect(ctxT(t), st.Detail["container_id"], client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, ep := range ins.Container.NetworkSettings.Networks {
		if ep.IPAddress.IsValid() {
			t.Logf("%s is %s on network %s (gateway %s)", id, ep.IPAddress, name, ep.Gateway)
			return ep.IPAddress
		}
	}
	t.Fatalf("workspace %s has no IPv4 address", id)
	return netip.Addr{}
}

func openSpec(sp *runtime.Spec) {
	sp.Policy.Network.Mode = policy.NetworkOpen
	sp.Labels = map[string]string{"test": "isolation"}
}

// TestOpenIsolation: two open-mode workspaces cannot reach each other by
// their bridge addresses, nor the host by any of its addresses (the
// bridge's gateway included), whether the host's listener is on 0.0.0.0 or
// 127.0.0.1.
func TestOpenIsolation(t *testing.T) {
	d := open(t)
	if s := d.Capabilities().Policy; !s.SupportsNetwork(policy.NetworkOpen) {
		t.Fatalf("open refused on this host: %s", s.Why["network:open"])
	}
	a := workspace(t, d, openSpec)
	b := workspace(t, d, openSpec)
	marker := "corral-iso-" + randHex(6)
	serveMarker(t, d, b, marker)
	bAddr := addrOf(t, d, b)
	bTarget := netip.AddrPortFrom(bAddr, listenPort).String()

	// Control: B's listener answers on its bridge address.
	if got := probe(t, d, b, marker, 60, bTarget, fmt.Sprintf("127.0.0.1:%d", listenPort)); len(got) != 2 {
		t.Fatalf("B's own listener: reached %v, want both %s and loopback", got, bTarget)
	}
	if got := probe(t, d, a, marker, 5, bTarget); len(got) != 0 {
		t.Errorf("workspace A reached workspace B's listener at %v", got)
	}
	hostTargets := hostListeners(t, marker)
	if got := probe(t, d, a, marker, 5, hostTargets...); len(got) != 0 {
		t.Errorf("workspace A reached the host's listeners at %v (tried %v)", got, hostTargets)
	}
}

// TestUnsafeSharedNetwork checks the operator's explicit opt-out keeps the
// engine's shared bridge, and proves the probes above can see a reachable
// neighbour: here A does reach B.
func TestUnsafeSharedNetwork(t *testing.T) {
	d, err := docker.Open(context.Background(), runtime.Config{
		ServerID: serverID,
		InitPath: testbin.Corral(t),
		Options:  enginetest.Docker(t),
		Logger:   hclog.NewNullLogger(),
		Network:  runtime.NetworkConfig{UnsafeShared: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	a := workspace(t, d, openSpec)
	b := workspace(t, d, openSpec)
	marker := "corral-shared-" + randHex(6)
	serveMarker(t, d, b, marker)
	bTarget := netip.AddrPortFrom(addrOf(t, d, b), listenPort).String()
	if got := probe(t, d, a, marker, 60, bTarget); len(got) != 1 {
		t.Errorf("on the shared network A did not reach B at %s", bTarget)
	}
}
