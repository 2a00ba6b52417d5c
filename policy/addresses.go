package policy

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/corralhq/corral/errdefs"
)

// CodeAddressDenied is the stable code of a refusal by CheckAddress.
const CodeAddressDenied = "address_denied"

// CheckAddress is the one outbound address policy: every connection the
// server makes on a user's behalf (the egress proxy, a conversation's
// llm.base_url, whatever comes later) dials only addresses it accepts.
//
// Without allowPrivate it refuses the denied ranges (loopback, link-local
// and cloud metadata, private, CGNAT, unspecified, multicast, the IPv6
// forms that embed an IPv4 address), addresses with a zone, and every
// address of this machine's interfaces, read at each call so that an
// address added since start-up is covered too. allowPrivate is the
// operator's explicit opt-in (Config.AllowPrivate, CORRAL_LLM_ALLOW_PRIVATE):
// it opens the private, CGNAT and link-local ranges (metadata included)
// and nothing else. Loopback, unspecified, multicast, the address-embedding
// IPv6 ranges (AlwaysDeniedRanges) and this machine's own addresses stay
// refused whatever the operator says: the server and the services beside
// it on this host are never a user's to reach (issue 7).
//
// The error is errdefs.ErrFailedPrecondition with the code "address_denied".
func CheckAddress(a netip.Addr, allowPrivate bool) error {
	zone := a.Zone()
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return errdefs.New(errdefs.ErrFailedPrecondition, CodeAddressDenied, "invalid address")
	}
	if allowPrivate {
		if IsAlwaysDenied(a) {
			return errdefs.New(errdefs.ErrFailedPrecondition, CodeAddressDenied,
				"%s is a loopback, unspecified, multicast or otherwise reserved address", a)
		}
	} else if zone != "" || IsDenied(a) {
		return errdefs.New(errdefs.ErrFailedPrecondition, CodeAddressDenied,
			"%s is a loopback, link-local, private or otherwise reserved address", a)
	}
	own, err := HostAddresses()
	if err != nil {
		// Fail closed: without the list, no address is known not to be ours.
		return errdefs.New(errdefs.ErrFailedPrecondition, CodeAddressDenied,
			"cannot list this machine's addresses to check %s: %v", a, err)
	}
	for _, h := range own {
		if h == a {
			return errdefs.New(errdefs.ErrFailedPrecondition, CodeAddressDenied,
				"%s is an address of this server", a)
		}
	}
	return nil
}

// HostAddresses returns the addresses of every interface of this machine
// (in the server's network namespace), unmapped and without zones.
func HostAddresses() ([]netip.Addr, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, ifa := range ifas {
		if pfx, err := netip.ParsePrefix(ifa.String()); err == nil {
			out = append(out, pfx.Addr().Unmap().WithZone(""))
		}
	}
	return out, nil
}

// DialControl returns a net.Dialer Control function that applies
// CheckAddress to the address each connection actually dials, after name
// resolution: a name that resolves to a public address when it is checked
// and to a denied one when it is dialled (DNS rebinding) is still refused.
// Its errors are CheckAddress's; net.Dialer wraps them in a *net.OpError,
// which errors.Is/As see through.
func DialControl(allowPrivate bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return errdefs.New(errdefs.ErrFailedPrecondition, CodeAddressDenied, "dial address %q is not an IP address and port", address)
		}
		return CheckAddress(ap.Addr(), allowPrivate)
	}
}
