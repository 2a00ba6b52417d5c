package hostnet

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/corralhq/corral/runtime/firewall"
)

func TestSourceAddr(t *testing.T) {
	a, b := SourceAddr("srv_one"), SourceAddr("srv_two")
	if !sourceRange.Contains(a) || !sourceRange.Contains(b) {
		t.Fatalf("source addresses %s, %s outside %s", a, b, sourceRange)
	}
	if a == b {
		t.Errorf("two servers share source address %s", a)
	}
	if SourceAddr("srv_one") != a {
		t.Errorf("source address not stable")
	}
	if n := SourceLink("srv_one"); len(n) > 15 || n[:7] != firewall.IfacePrefix("srv_one") {
		t.Errorf("link name %q: want the server's prefix, at most 15 bytes", n)
	}
}

// TestEnsureRemoveSource makes the source interface on this host, twice,
// checks the address is the host's own, and removes it, twice.
func TestEnsureRemoveSource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	id := "srv_hostnet_test"
	t.Cleanup(func() { RemoveSource(id) })
	for i := 0; i < 2; i++ {
		addr, err := EnsureSource(id)
		if err != nil {
			t.Fatalf("EnsureSource (call %d): %v", i+1, err)
		}
		if addr != SourceAddr(id) {
			t.Fatalf("EnsureSource gave %s, want %s", addr, SourceAddr(id))
		}
	}
	// The address is local: a socket can bind to it.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(SourceAddr(id), 0).String())
	if err != nil {
		t.Fatalf("bind to the source address: %v", err)
	}
	ln.Close()
	for i := 0; i < 2; i++ {
		if err := RemoveSource(id); err != nil {
			t.Fatalf("RemoveSource (call %d): %v", i+1, err)
		}
	}
	for _, n := range []string{SourceLink(id), sourcePeer(id)} {
		if LinkExists(n) {
			t.Errorf("interface %s left behind", n)
		}
	}
}

// TestBridgeNetfilter: on a root host with br_netfilter, bridged traffic
// passes the IP hooks afterwards.
func TestBridgeNetfilter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if err := BridgeNetfilter(); err != nil {
		t.Fatalf("BridgeNetfilter: %v", err)
	}
	for _, p := range bridgeSysctls {
		if b, err := os.ReadFile(p); err != nil || string(b[:1]) != "1" {
			t.Errorf("%s = %q (%v), want 1", p, b, err)
		}
	}
}
