package policy_test

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/corralhq/corral/errdefs"
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
		err := policy.CheckAddress(a, false)
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != policy.CodeAddressDenied {
			t.Errorf("host address %s: %v, want address_denied", a, err)
		}
		// The IPv4-mapped form is the same address.
		if a.Is4() {
			if err := policy.CheckAddress(netip.AddrFrom16(a.As16()), false); err == nil {
				t.Errorf("host address %s in IPv4-mapped form was accepted", a)
			}
		}
	}
}

func TestCheckAddressRanges(t *testing.T) {
	for _, s := range []string{"127.0.0.1", "127.1.2.3", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1",
		"169.254.169.254", "100.64.0.1", "0.0.0.0", "::", "fe80::1", "fd00::1", "224.0.0.1",
		"::ffff:127.0.0.1", "64:ff9b::a00:1", "2002:a00:1::"} {
		if err := policy.CheckAddress(netip.MustParseAddr(s), false); errdefs.Code(err) != policy.CodeAddressDenied {
			t.Errorf("%s: %v, want address_denied", s, err)
		}
		if err := policy.CheckAddress(netip.MustParseAddr(s), true); err != nil {
			t.Errorf("%s with allowPrivate: %v", s, err)
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
	allow := net.Dialer{Control: policy.DialControl(true)}
	c, err := allow.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial with allowPrivate: %v", err)
	}
	c.Close()
}
