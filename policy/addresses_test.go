package policy_test

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/policy"
)

func TestCheckAddressDeniesHostAddresses(t *testing.T) {
	own, err := policy.HostAddresses()
	if err != nil {
		t.Fatal(err)
	}
	if len(own) == 0 {
		t.Fatal("no interface addresses")
	}
	for _, a := range own {
		for _, allowPrivate := range []bool{false, true} {
			err := policy.CheckAddress(a, allowPrivate)
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != policy.CodeAddressDenied {
				t.Errorf("host address %s (allowPrivate %v): %v, want address_denied", a, allowPrivate, err)
			}
		}
		// The IPv4-mapped form is the same address.
		if a.Is4() {
			if err := policy.CheckAddress(netip.AddrFrom16(a.As16()), true); err == nil {
				t.Errorf("host address %s in IPv4-mapped form was accepted", a)
			}
		}
	}
}

func TestCheckAddressRanges(t *testing.T) {
	// Opened by allowPrivate: other machines' private, CGNAT and
	// link-local (metadata) addresses.
	for _, s := range []string{"10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
		"fe80::1", "fd00::1", "::ffff:10.0.0.1"} {
		if err := policy.CheckAddress(netip.MustParseAddr(s), false); errdefs.Code(err) != policy.CodeAddressDenied {
			t.Errorf("%s: %v, want address_denied", s, err)
		}
		if err := policy.CheckAddress(netip.MustParseAddr(s), true); err != nil {
			t.Errorf("%s with allowPrivate: %v", s, err)
		}
	}
	// Never opened: this machine (loopback in every form), unspecified,
	// multicast, reserved, and the IPv6 ranges that can carry any IPv4
	// address.
	for _, s := range []string{"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::",
		"224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255", "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"} {
		for _, allowPrivate := range []bool{false, true} {
			if err := policy.CheckAddress(netip.MustParseAddr(s), allowPrivate); errdefs.Code(err) != policy.CodeAddressDenied {
				t.Errorf("%s (allowPrivate %v): %v, want address_denied", s, allowPrivate, err)
			}
		}
	}
	for _, s := range []string{"1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"} {
		if err := policy.CheckAddress(netip.MustParseAddr(s), false); err != nil {
			t.Errorf("public %s: %v", s, err)
		}
	}
}

// TestDialControlChecksTheDialledAddress: the control sees the resolved
// address, so a name resolving to loopback is refused at connect time.
func TestDialControlChecksTheDialledAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	d := net.Dialer{Control: policy.DialControl(false)}
	_, err = d.Dial("tcp", net.JoinHostPort("localhost", port))
	if errdefs.Code(err) != policy.CodeAddressDenied {
		t.Fatalf("dial localhost: %v, want address_denied", err)
	}
	// allowPrivate does not open loopback: not by name, not by address.
	allow := net.Dialer{Control: policy.DialControl(true)}
	for _, hp := range []string{net.JoinHostPort("localhost", port), ln.Addr().String()} {
		if _, err := allow.Dial("tcp", hp); errdefs.Code(err) != policy.CodeAddressDenied {
			t.Fatalf("dial %s with allowPrivate: %v, want address_denied", hp, err)
		}
	}
	// It opens another machine's private address.
	up := nettest.StartPrivateHost(t)
	pl := up.Listen(t)
	c, err := allow.Dial("tcp", pl.Addr().String())
	if err != nil {
		t.Fatalf("dial private host %s with allowPrivate: %v", pl.Addr(), err)
	}
	c.Close()
	if _, err := d.Dial("tcp", pl.Addr().String()); errdefs.Code(err) != policy.CodeAddressDenied {
		t.Fatalf("dial private host %s without allowPrivate: %v, want address_denied", pl.Addr(), err)
	}
	// Its end of the link is this machine's: refused.
	if _, err := allow.Dial("tcp", netip.AddrPortFrom(up.Gateway, 9).String()); errdefs.Code(err) != policy.CodeAddressDenied {
		t.Fatalf("dial this machine's %s with allowPrivate: %v, want address_denied", up.Gateway, err)
	}
}
