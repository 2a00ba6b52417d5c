package docker_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/docker"
)

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
	nettest.ServeMarker(t, d, b, marker)
	bAddr, _ := nettest.Addrs(t, d, b)
	_, gw := nettest.Addrs(t, d, a)
	bTarget := netip.AddrPortFrom(bAddr, nettest.Port).String()

	// Control: B's listener answers on its bridge address.
	if got := nettest.Probe(t, d, b, marker, 60, bTarget, fmt.Sprintf("127.0.0.1:%d", nettest.Port)); len(got) != 2 {
		t.Fatalf("B's own listener: reached %v, want both %s and loopback", got, bTarget)
	}
	if got := nettest.Probe(t, d, a, marker, 5, bTarget); len(got) != 0 {
		t.Errorf("workspace A reached workspace B's listener at %v", got)
	}
	host := nettest.HostTargets(t, marker, gw)
	if got := nettest.Probe(t, d, a, marker, 5, host...); len(got) != 0 {
		t.Errorf("workspace A reached the host's listeners at %v (tried %v)", got, host)
	}
}

// TestUnsafeSharedNetwork checks that the operator's explicit opt-out keeps
// the engine's shared bridge, and shows that the probes above see what is
// reachable: here A reaches B and the host.
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
	nettest.ServeMarker(t, d, b, marker)
	bAddr, _ := nettest.Addrs(t, d, b)
	_, gw := nettest.Addrs(t, d, a)
	bTarget := netip.AddrPortFrom(bAddr, nettest.Port).String()
	if got := nettest.Probe(t, d, a, marker, 60, bTarget); len(got) != 1 {
		t.Errorf("on the shared network A did not reach B at %s", bTarget)
	}
	if got := nettest.Probe(t, d, a, marker, 60, nettest.HostTargets(t, marker, gw)...); len(got) == 0 {
		t.Errorf("on the shared network A reached none of the host's listeners")
	}
}
