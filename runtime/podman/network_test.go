package podman

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

var openPolicy = policy.Policy{Network: policy.Network{Mode: policy.NetworkOpen}}

// TestOpenIsolation: open-mode workspaces cannot reach each other, nor the
// host by any of its addresses (their gateway included), whether the
// host's listener is on 0.0.0.0 or 127.0.0.1; rootful (the server's bridge
// network) and rootless (slirp4netns from the server's source address).
func TestOpenIsolation(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := open(t, m.rootless, nil)
			if s := d.Capabilities().Policy; !s.SupportsNetwork(policy.NetworkOpen) {
				t.Fatalf("open refused on this host: %s", s.Why["network:open"])
			}
			a := workspace(t, d, openPolicy)
			b := workspace(t, d, openPolicy)
			marker := "corral-iso-" + randHex(6)
			nettest.ServeMarker(t, d, b, marker)
			bAddr, _ := nettest.Addrs(t, d, b)
			aAddr, gw := nettest.Addrs(t, d, a)
			bTarget := netip.AddrPortFrom(bAddr, nettest.Port).String()
			if got := nettest.Probe(t, d, b, marker, 60, bTarget, fmt.Sprintf("127.0.0.1:%d", nettest.Port)); len(got) != 2 {
				t.Fatalf("B's own listener: reached %v, want both %s and loopback", got, bTarget)
			}
			if aAddr != bAddr { // rootless: every sandbox is 10.0.2.100 in its own slirp
				if got := nettest.Probe(t, d, a, marker, 5, bTarget); len(got) != 0 {
					t.Errorf("workspace A reached workspace B's listener at %v", got)
				}
			}
			host := nettest.HostTargets(t, marker, gw)
			if got := nettest.Probe(t, d, a, marker, 5, host...); len(got) != 0 {
				t.Errorf("workspace A reached the host's listeners at %v (tried %v)", got, host)
			}
		})
	}
}

// TestUnsafeSharedNetwork checks that the operator's explicit opt-out keeps
// the engine's default network, and shows that the probes above see what is
// reachable there: the host's listener (both modes) and, rootful, B.
func TestUnsafeSharedNetwork(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := openWith(t, m.rootless, nil, runtime.NetworkConfig{UnsafeShared: true})
			a := workspace(t, d, openPolicy)
			b := workspace(t, d, openPolicy)
			marker := "corral-shared-" + randHex(6)
			nettest.ServeMarker(t, d, b, marker)
			bAddr, _ := nettest.Addrs(t, d, b)
			aAddr, gw := nettest.Addrs(t, d, a)
			if aAddr != bAddr {
				bTarget := netip.AddrPortFrom(bAddr, nettest.Port).String()
				if got := nettest.Probe(t, d, a, marker, 60, bTarget); len(got) != 1 {
					t.Errorf("on the shared network A did not reach B at %s", bTarget)
				}
			}
			if got := nettest.Probe(t, d, a, marker, 60, nettest.HostTargets(t, marker, gw)...); len(got) == 0 {
				t.Errorf("on the shared network A reached none of the host's listeners")
			}
		})
	}
}
