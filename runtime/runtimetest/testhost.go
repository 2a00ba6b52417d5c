package runtimetest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"

	"github.com/corralhq/corral/internal/nettest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The test host: a machine on a public-looking address (TEST-NET-3, which
// no real network routes) that an open-mode sandbox must reach. It lives in
// a network namespace the suite makes, routed from this machine through a
// veth pair, so all traffic stays on this machine.
var (
	testHostAddr    = netip.MustParseAddr("203.0.113.10")
	testHostGateway = netip.MustParseAddr("203.0.113.1")
	// testHostDenied are more addresses of the test host, routed from this
	// machine like the public one, in ranges an open sandbox must not
	// reach: link-local (where cloud metadata lives) and private.
	testHostDenied = []netip.Addr{netip.MustParseAddr("169.254.77.10"), netip.MustParseAddr("10.255.77.10")}
)

const (
	// testHostIface is the host end of the test host's veth; not "crl…",
	// which every Corral server's firewall keeps sandboxes away from.
	testHostIface = "corraltsthost0"
	// testHostLock serialises test hosts across test processes: every
	// driver's suite uses the same address.
	testHostLock = "/run/lock/corral-testhost"
	// testHostLinePort is where the test host answers one line to any
	// connection (what netprobe dial reads); port 80 serves HTTP.
	testHostLinePort = 7
)

// testHost is the running test host.
type testHost struct {
	marker string       // in every answer
	hits   atomic.Int64 // connections and requests received
}

func (h *testHost) httpURL() string { return "http://" + testHostAddr.String() + "/" }
func (h *testHost) lineTarget() string {
	return "tcp:" + netip.AddrPortFrom(testHostAddr, testHostLinePort).String()
}

// startTestHost makes the test host, removed (namespace, veth, listeners)
// when t ends. It needs root; without it t is skipped.
func startTestHost(t *testing.T) *testHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the test host needs root (a network namespace and a veth pair)")
	}
	lock, err := os.OpenFile(testHostLock, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatalf("test host lock: %v", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		lock.Close()
		t.Fatalf("test host lock: %v", err)
	}
	t.Cleanup(func() { lock.Close() })

	// A crashed run's leftover (its namespace went with its process).
	if l, err := netlink.LinkByName(testHostIface); err == nil {
		_ = netlink.LinkDel(l)
	}
	ns, err := nettest.NewNetns()
	if err != nil {
		t.Fatalf("test host namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: testHostIface},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("test host veth: %v", err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(testHostIface); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("remove test host veth: %v", err)
			}
		}
	})
	if err := configureTestHost(ns); err != nil {
		t.Fatalf("test host: %v", err)
	}

	h := &testHost{marker: "corral-test-host-" + randHex(6)}
	lnHTTP, err := nettest.ListenIn(ns, netip.AddrPortFrom(testHostAddr, 80))
	if err != nil {
		t.Fatalf("test host: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.hits.Add(1)
			fmt.Fprintln(w, h.marker)
		}),
		ReadHeaderTimeout: wait,
	}
	go srv.Serve(lnHTTP)
	t.Cleanup(func() { srv.Close() })
	for _, a := range append([]netip.Addr{testHostAddr}, testHostDenied...) {
		lnLine, err := nettest.ListenIn(ns, netip.AddrPortFrom(a, testHostLinePort))
		if err != nil {
			t.Fatalf("test host: %v", err)
		}
		t.Cleanup(func() { lnLine.Close() })
		go serveLine(lnLine, h.marker, &h.hits)
	}
	return h
}

// configureTestHost addresses both ends and routes the namespace back.
func configureTestHost(ns netns.NsHandle) error {
	host, err := netlink.LinkByName(testHostIface)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: testHostGateway.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return fmt.Errorf("address %s: %w", testHostGateway, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		if name == "eth0" {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: testHostAddr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				return fmt.Errorf("address %s: %w", testHostAddr, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	eth0, _ := h.LinkByName("eth0")
	for _, a := range testHostDenied {
		if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
		// From this machine, through the veth (removed with it).
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return fmt.Errorf("route to %s: %w", a, err)
		}
	}
	return h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: testHostGateway.AsSlice()})
}

// serveLine answers every connection with one line, counting them.
func serveLine(ln net.Listener, line string, hits *atomic.Int64) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		hits.Add(1)
		fmt.Fprintln(c, line)
		c.Close()
	}
}
