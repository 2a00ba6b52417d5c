package policy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Host is one entry of an allowlist: an exact name ("api.github.com"), a
// wildcard ("*.pypi.org", which matches subdomains but not pypi.org itself),
// an IP address or a CIDR prefix; each with an optional port.
type Host struct {
	Name     string       // lower-case name without a leading "*."; empty for IPs
	Wildcard bool         // Name matches subdomains only
	Prefix   netip.Prefix // valid for IP and CIDR entries
	Port     int          // 0 = any port
}

// ParseHost parses an allowlist entry. IPv6 addresses with a port are written
// in brackets: "[2001:db8::1]:443".
func ParseHost(s string) (Host, error) {
	in := strings.TrimSpace(strings.ToLower(s))
	if in == "" {
		return Host{}, fmt.Errorf("empty allowed host")
	}
	var h Host
	host := in
	if p, err := netip.ParsePrefix(in); err == nil {
		h.Prefix = p.Masked()
		return h, nil
	}
	if addr, err := netip.ParseAddr(in); err == nil {
		h.Prefix = netip.PrefixFrom(addr, addr.BitLen())
		return h, nil
	}
	if hp, port, err := net.SplitHostPort(in); err == nil {
		n, perr := strconv.Atoi(port)
		if perr != nil || n < 1 || n > 65535 {
			return Host{}, fmt.Errorf("allowed host %q: invalid port %q", s, port)
		}
		h.Port, host = n, hp
	}
	if p, err := netip.ParsePrefix(host); err == nil {
		h.Prefix = p.Masked()
		return h, nil
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		h.Prefix = netip.PrefixFrom(addr, addr.BitLen())
		return h, nil
	}
	if strings.HasPrefix(host, "*.") {
		h.Wildcard, host = true, host[2:]
	}
	if !validName(host) {
		return Host{}, fmt.Errorf("allowed host %q is not a host name, *.wildcard, IP address or CIDR", s)
	}
	h.Name = strings.TrimSuffix(host, ".")
	return h, nil
}

func validName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// String is the canonical form of h, which ParseHost reads back.
func (h Host) String() string {
	var s string
	switch {
	case h.Name != "" && h.Wildcard:
		s = "*." + h.Name
	case h.Name != "":
		s = h.Name
	case h.Prefix.IsSingleIP():
		s = h.Prefix.Addr().String()
	default:
		s = h.Prefix.String()
	}
	if h.Port != 0 {
		if h.Name == "" && h.Prefix.Addr().Is6() {
			s = "[" + s + "]"
		}
		s += ":" + strconv.Itoa(h.Port)
	}
	return s
}

// MatchName reports whether a host name and port requested by a sandbox
// match this entry by name. IP entries never match names.
func (h Host) MatchName(name string, port int) bool {
	if h.Name == "" || (h.Port != 0 && h.Port != port) {
		return false
	}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if h.Wildcard {
		return strings.HasSuffix(name, "."+h.Name)
	}
	return name == h.Name
}

// MatchAddr reports whether an IP address and port match this entry.
func (h Host) MatchAddr(addr netip.Addr, port int) bool {
	if !h.Prefix.IsValid() || (h.Port != 0 && h.Port != port) {
		return false
	}
	return h.Prefix.Contains(addr.Unmap())
}

// local reports whether h names this machine by name ("localhost",
// "*.localhost") or overlaps a range that stays denied whatever the
// operator allows (AlwaysDeniedRanges). private reports whether it names
// anything CheckAddress refuses without allowPrivate.
func (h Host) local() bool {
	if h.Name != "" {
		return h.Name == "localhost" || strings.HasSuffix(h.Name, ".localhost")
	}
	for _, r := range alwaysDeniedRanges {
		if h.Prefix.Overlaps(r) {
			return true
		}
	}
	return false
}

func (h Host) private() bool {
	if h.local() {
		return true
	}
	for _, r := range deniedRanges {
		if h.Prefix.Overlaps(r) {
			return true
		}
	}
	return false
}

// deniedRanges are never reachable through the egress proxy unless the
// operator allows private addresses: loopback, link-local (cloud metadata at
// 169.254.169.254), private, CGNAT, unspecified and multicast ranges.
var deniedRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("::/96"),          // unspecified and IPv4-compatible
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64: can carry any IPv4 address
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("2002::/16"),      // 6to4: can carry any IPv4 address
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// IsDenied reports whether addr is in a range the proxy refuses by default.
func IsDenied(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, r := range deniedRanges {
		if r.Contains(addr) {
			return true
		}
	}
	return false
}

// DeniedRanges returns the ranges IsDenied refuses, for enforcement outside
// the proxy (a driver's firewall rules). The slice is a copy.
func DeniedRanges() []netip.Prefix {
	return append([]netip.Prefix(nil), deniedRanges...)
}

// alwaysDeniedRanges stay denied when the operator allows private
// addresses: loopback, unspecified, "this network", reserved, multicast and
// the IPv6 ranges that can carry any IPv4 address (so also loopback). They
// are deniedRanges less the private, CGNAT and link-local ones.
var alwaysDeniedRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("::/96"),
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("2002::/16"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("ff00::/8"),
}

// IsAlwaysDenied reports whether addr is in a range that stays denied
// whatever the operator allows (see CheckAddress).
func IsAlwaysDenied(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, r := range alwaysDeniedRanges {
		if r.Contains(addr) {
			return true
		}
	}
	return false
}

// AlwaysDeniedRanges returns the ranges IsAlwaysDenied refuses. The slice
// is a copy.
func AlwaysDeniedRanges() []netip.Prefix {
	return append([]netip.Prefix(nil), alwaysDeniedRanges...)
}
