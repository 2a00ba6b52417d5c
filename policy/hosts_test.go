package policy_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/corralhq/corral/policy"
)

func TestParseHost(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		in   string
		want policy.Host
		str  string // canonical form
	}{
		{"api.github.com", policy.Host{Name: "api.github.com"}, "api.github.com"},
		{"  API.GitHub.COM.  ", policy.Host{Name: "api.github.com"}, "api.github.com"},
		{"localhost", policy.Host{Name: "localhost"}, "localhost"},
		{"under_score.example", policy.Host{Name: "under_score.example"}, "under_score.example"},
		{"example.com:8080", policy.Host{Name: "example.com", Port: 8080}, "example.com:8080"},
		{"*.pypi.org", policy.Host{Name: "pypi.org", Wildcard: true}, "*.pypi.org"},
		{"*.PyPI.org:443", policy.Host{Name: "pypi.org", Wildcard: true, Port: 443}, "*.pypi.org:443"},
		{"1.2.3.4", policy.Host{Prefix: pfx("1.2.3.4/32")}, "1.2.3.4"},
		{"1.2.3.4:80", policy.Host{Prefix: pfx("1.2.3.4/32"), Port: 80}, "1.2.3.4:80"},
		{"10.0.0.0/8", policy.Host{Prefix: pfx("10.0.0.0/8")}, "10.0.0.0/8"},
		{"10.1.2.3/8", policy.Host{Prefix: pfx("10.0.0.0/8")}, "10.0.0.0/8"},
		{"198.51.100.0/24:443", policy.Host{Prefix: pfx("198.51.100.0/24"), Port: 443}, "198.51.100.0/24:443"},
		{"2001:db8::1", policy.Host{Prefix: pfx("2001:db8::1/128")}, "2001:db8::1"},
		{"2001:DB8::1", policy.Host{Prefix: pfx("2001:db8::1/128")}, "2001:db8::1"},
		{"[2001:db8::1]:443", policy.Host{Prefix: pfx("2001:db8::1/128"), Port: 443}, "[2001:db8::1]:443"},
		{"2001:db8::/32", policy.Host{Prefix: pfx("2001:db8::/32")}, "2001:db8::/32"},
		{"[2001:db8::/32]:22", policy.Host{Prefix: pfx("2001:db8::/32"), Port: 22}, "[2001:db8::/32]:22"},
		{"x.io:65535", policy.Host{Name: "x.io", Port: 65535}, "x.io:65535"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			h, err := policy.ParseHost(tc.in)
			if err != nil {
				t.Fatalf("ParseHost(%q): %v", tc.in, err)
			}
			if h != tc.want {
				t.Fatalf("ParseHost(%q) = %+v, want %+v", tc.in, h, tc.want)
			}
			if got := h.String(); got != tc.str {
				t.Fatalf("String() = %q, want %q", got, tc.str)
			}
			back, err := policy.ParseHost(h.String())
			if err != nil || back != h {
				t.Fatalf("round trip of %q: %+v, %v", h.String(), back, err)
			}
		})
	}
}

func TestParseHostInvalid(t *testing.T) {
	for _, in := range []string{
		"", "   ", "*", "*.", "*.*.example.com", "exa mple.com", "-bad.com", "bad-.com",
		"a..b", ".", "..", "http://example.com", "example.com/path", "user@example.com",
		"host:0", "host:65536", "host:-1", "host:abc", "host:", "[::1]", "1.2.3.4/33",
		"ünïcode.example", strings.Repeat("a", 64) + ".com",
		strings.Repeat("abcdefghi.", 26) + "com", // 263 bytes
	} {
		if h, err := policy.ParseHost(in); err == nil {
			t.Errorf("ParseHost(%q) = %+v, want an error", in, h)
		}
	}
}

func TestHostMatchName(t *testing.T) {
	must := func(s string) policy.Host {
		h, err := policy.ParseHost(s)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, tc := range []struct {
		entry, name string
		port        int
		want        bool
	}{
		{"api.github.com", "api.github.com", 443, true},
		{"api.github.com", "API.GitHub.com.", 80, true},
		{"api.github.com", "github.com", 443, false},
		{"api.github.com", "xapi.github.com", 443, false},
		{"api.github.com", "api.github.com.evil.test", 443, false},
		{"api.github.com:443", "api.github.com", 443, true},
		{"api.github.com:443", "api.github.com", 80, false},
		{"*.pypi.org", "files.pypi.org", 443, true},
		{"*.pypi.org", "a.b.pypi.org", 443, true},
		{"*.pypi.org", "pypi.org", 443, false},
		{"*.pypi.org", "evilpypi.org", 443, false},
		{"*.pypi.org:443", "files.pypi.org", 8443, false},
		{"1.2.3.4", "1.2.3.4", 80, false}, // IP entries never match names
		{"10.0.0.0/8", "10.0.0.1", 80, false},
	} {
		if got := must(tc.entry).MatchName(tc.name, tc.port); got != tc.want {
			t.Errorf("%q.MatchName(%q, %d) = %v, want %v", tc.entry, tc.name, tc.port, got, tc.want)
		}
	}
}

func TestHostMatchAddr(t *testing.T) {
	for _, tc := range []struct {
		entry, addr string
		port        int
		want        bool
	}{
		{"1.2.3.4", "1.2.3.4", 80, true},
		{"1.2.3.4", "1.2.3.5", 80, false},
		{"1.2.3.4:443", "1.2.3.4", 443, true},
		{"1.2.3.4:443", "1.2.3.4", 80, false},
		{"10.0.0.0/8", "10.200.3.4", 22, true},
		{"10.0.0.0/8", "11.0.0.1", 22, false},
		{"10.0.0.0/8", "::ffff:10.1.2.3", 22, true}, // IPv4-mapped IPv6 is the IPv4 address
		{"2001:db8::/32", "2001:db8:1::5", 443, true},
		{"2001:db8::/32", "2001:db9::5", 443, false},
		{"example.com", "1.2.3.4", 80, false}, // name entries never match addresses
	} {
		h, err := policy.ParseHost(tc.entry)
		if err != nil {
			t.Fatal(err)
		}
		if got := h.MatchAddr(netip.MustParseAddr(tc.addr), tc.port); got != tc.want {
			t.Errorf("%q.MatchAddr(%s, %d) = %v, want %v", tc.entry, tc.addr, tc.port, got, tc.want)
		}
	}
}

func TestIsDenied(t *testing.T) {
	for _, a := range []string{
		"127.0.0.1", "127.1.2.3", "169.254.169.254", "10.0.0.1", "172.16.0.1", "172.31.255.255",
		"192.168.1.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
		"::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
		"64:ff9b::a9fe:a9fe", "64:ff9b:1::7f00:1", "2002:a9fe:a9fe::1", "::7f00:1", // NAT64, 6to4 and IPv4-compatible forms
	} {
		if !policy.IsDenied(netip.MustParseAddr(a)) {
			t.Errorf("IsDenied(%s) = false, want true", a)
		}
	}
	for _, a := range []string{"8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"} {
		if policy.IsDenied(netip.MustParseAddr(a)) {
			t.Errorf("IsDenied(%s) = true, want false", a)
		}
	}
}
