package nettest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// PrivateHost is another machine on a private address (10.254.N.2), made
// for one test: a network namespace joined to this one by a veth pair whose
// host end holds Gateway (10.254.N.1). Addr is private but not an address
// of this machine, which is what an operator's AllowPrivate opens; Gateway
// is one of this machine's own addresses, which nothing opens.
type PrivateHost struct {
	Addr    netip.Addr
	Gateway netip.Addr
	ns      netns.NsHandle
}

// privateHostSlots bounds how many private hosts may exist at once on this
// machine (across test processes); each slot owns 10.254.N.0/30.
const privateHostSlots = 64

// StartPrivateHost makes a private host, removed (namespace, veth,
// listeners) when t ends. It needs root; without it t is skipped. Each
// host takes a free slot, held by a lock file, so that test processes
// running at the same time never share addresses.
func StartPrivateHost(t testing.TB) *PrivateHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a private host needs root (a network namespace and a veth pair)")
	}
	slot := -1
	for n := 0; n < privateHostSlots; n++ {
		f, err := os.OpenFile(fmt.Sprintf("/run/lock/corral-privhost-%d", n), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			t.Fatalf("private host lock: %v", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		t.Cleanup(func() { f.Close() })
		slot = n
		break
	}
	if slot < 0 {
		t.Fatalf("no free private host slot of %d", privateHostSlots)
	}
	h := &PrivateHost{
		Addr:    netip.AddrFrom4([4]byte{10, 254, byte(slot), 2}),
		Gateway: netip.AddrFrom4([4]byte{10, 254, byte(slot), 1}),
	}
	iface := fmt.Sprintf("corralph%d", slot)
	// A crashed run's leftover: the slot is ours now.
	if l, err := netlink.LinkByName(iface); err == nil {
		_ = netlink.LinkDel(l)
	}
	ns, err := NewNetns()
	if err != nil {
		t.Fatalf("private host namespace: %v", err)
	}
	h.ns = ns
	t.Cleanup(func() { ns.Close() })
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: iface},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("private host veth: %v", err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(iface); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("remove private host veth: %v", err)
			}
		}
	})
	if err := h.configure(iface); err != nil {
		t.Fatalf("private host: %v", err)
	}
	return h
}

func (h *PrivateHost) configure(iface string) error {
	mask := net.CIDRMask(30, 32)
	host, err := netlink.LinkByName(iface)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: h.Gateway.AsSlice(), Mask: mask}}); err != nil {
		return fmt.Errorf("address %s: %w", h.Gateway, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		return err
	}
	defer nh.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := nh.LinkByName(name)
		if err != nil {
			return err
		}
		if name == "eth0" {
			if err := nh.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: h.Addr.AsSlice(), Mask: mask}}); err != nil {
				return fmt.Errorf("address %s: %w", h.Addr, err)
			}
		}
		if err := nh.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

// Listen opens a TCP listener on Addr (port 0: any free port) inside the
// private host, closed when t ends.
func (h *PrivateHost) Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := ListenIn(h.ns, netip.AddrPortFrom(h.Addr, 0))
	if err != nil {
		t.Fatalf("private host: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
