package process_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/firewall"
	"github.com/corralhq/corral/runtime/runtimetest"
)

func openPolicy() policy.Policy {
	return policy.Policy{Network: policy.Network{Mode: policy.NetworkOpen}}
}

// needIsolatedOpen skips t unless rt isolates network mode open here.
func needIsolatedOpen(t *testing.T, rt runtime.Runtime) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("isolating network mode open needs root")
	}
	if !rt.Capabilities().Policy.SupportsNetwork(policy.NetworkOpen) {
		t.Fatalf("root, yet open is not supported: %v", rt.Capabilities().Policy.Why)
	}
}

func TestNetworkIsolation(t *testing.T) {
	rt := open(t, "")
	needIsolatedOpen(t, rt)
	runtimetest.RunIsolation(t, rt, "")
}

// hostLinks returns the names of the host's interfaces starting with prefix.
func hostLinks(t *testing.T, prefix string) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func tableExists(t *testing.T, serverID string) bool {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range ts {
		if tb.Name == firewall.TableName(serverID) {
			return true
		}
	}
	return false
}

// An open workspace has eth0 on a /30 of the subnet, a default route, and a
// read-only resolv.conf naming the host's resolvers; its lease survives a
// restart and Stop, and goes with Remove; Close with no workspace left
// removes the firewall table.
func TestOpenNetworkLifecycle(t *testing.T) {
	dir := t.TempDir()
	subnet := netip.MustParsePrefix("10.213.0.0/16")
	rt := openNet(t, dir, runtime.NetworkConfig{Subnet: subnet}, nil)
	needIsolatedOpen(t, rt)
	if !tableExists(t, "test") {
		t.Fatalf("no firewall table %s after Open", firewall.TableName("test"))
	}
	ws := workspace(t, rt, openPolicy(), "")
	r := sh(t, rt, ws, "cat /proc/net/route; echo ---; cat /etc/resolv.conf; echo ---; echo x >> /etc/resolv.conf && echo writable")
	parts := strings.Split(r.stdout, "---\n")
	if len(parts) != 3 {
		t.Fatalf("unexpected output: %q %q", r.stdout, r.stderr)
	}
	if !strings.Contains(parts[0], "eth0\t00000000") {
		t.Errorf("no default route via eth0:\n%s", parts[0])
	}
	for _, a := range firewall.Resolvers() {
		if !strings.Contains(parts[1], "nameserver "+a.String()) {
			t.Errorf("resolv.conf lacks %s:\n%s", a, parts[1])
		}
	}
	if strings.Contains(parts[2], "writable") {
		t.Errorf("/etc/resolv.conf is writable in the sandbox")
	}
	f := strings.Fields(sh(t, rt, ws, "ip -4 -o addr show dev eth0").stdout)
	if len(f) < 4 {
		t.Fatalf("ip addr show eth0: %q", f)
	}
	if p, err := netip.ParsePrefix(f[3]); err != nil || p.Bits() != 30 || !subnet.Contains(p.Addr()) {
		t.Errorf("eth0 address %q, want a /30 in %s", f[3], subnet)
	}
	prefix := firewall.IfacePrefix("test") + "v"
	links := hostLinks(t, prefix)
	if len(links) != 1 {
		t.Fatalf("host veths %v, want one", links)
	}
	leases, err := os.ReadFile(filepath.Join(dir, "net", "leases.json"))
	if err != nil || !strings.Contains(string(leases), ws) {
		t.Fatalf("leases: %s, %v", leases, err)
	}

	// A restart adopts the running sandbox: its veth stays, and a second
	// workspace gets another lease.
	second := openNet(t, dir, runtime.NetworkConfig{Subnet: subnet}, nil)
	if got := hostLinks(t, prefix); len(got) != 1 || got[0] != links[0] {
		t.Fatalf("after restart host veths %v, want %v", got, links)
	}
	ws2 := workspace(t, second, openPolicy(), "")
	if got := hostLinks(t, prefix); len(got) != 2 {
		t.Fatalf("host veths with two workspaces %v", got)
	}
	// Stop takes the veth away; Start brings it back on the same lease.
	ctx := context.Background()
	if err := second.Stop(ctx, ws2); err != nil {
		t.Fatal(err)
	}
	if got := hostLinks(t, prefix); len(got) != 1 {
		t.Fatalf("host veths after Stop %v", got)
	}
	if err := second.Start(ctx, ws2); err != nil {
		t.Fatal(err)
	}
	if got := hostLinks(t, prefix); len(got) != 2 {
		t.Fatalf("host veths after Start %v", got)
	}
	for _, id := range []string{ws, ws2} {
		if err := second.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got := hostLinks(t, prefix); len(got) != 0 {
		t.Errorf("host veths after Remove %v", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "net", "leases.json")); strings.Contains(string(b), "ws_") {
		t.Errorf("leases after Remove: %s", b)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if tableExists(t, "test") {
		t.Errorf("firewall table left after Close with no workspaces")
	}
}

// A veth left by a crash (no running workspace holds it) is removed when
// the driver opens.
func TestOpenRepairsLeftoverVeth(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := firewall.IfacePrefix("test") + "v3ffe"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			netlink.LinkDel(l)
		}
	})
	rt := open(t, "")
	needIsolatedOpen(t, rt)
	if got := hostLinks(t, name); len(got) != 0 {
		t.Errorf("leftover veth %v not removed at Open", got)
	}
}

// A subnet that overlaps a route of the host refuses open, naming why;
// none still works.
func TestOpenRefusedWhenSubnetOverlaps(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const dummy = "corraltstovl"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dummy}, PeerName: dummy + "p"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(dummy); err == nil {
			netlink.LinkDel(l)
		}
	})
	l, err := netlink.LinkByName(dummy)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 219, 7, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	rt := openNet(t, "", runtime.NetworkConfig{Subnet: netip.MustParsePrefix("10.219.0.0/16")}, nil)
	c := rt.Capabilities().Policy
	if c.SupportsNetwork(policy.NetworkOpen) || !strings.Contains(c.Why["network:open"], "overlaps") {
		t.Fatalf("open with an overlapping subnet: %v %v", c.Network, c.Why)
	}
	err = rt.Create(context.Background(), runtime.Spec{ID: "ws_pt_overlap", Policy: openPolicy()})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "unsupported_network" || !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("Create open: %v (code %q)", err, errdefs.Code(err))
	}
	workspace(t, rt, none(), "")
}
