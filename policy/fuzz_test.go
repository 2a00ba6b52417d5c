package policy_test

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/corralhq/corral/policy"
)

// The fuzz targets run their seeds (here and in testdata/fuzz) as ordinary
// tests; `go test -fuzz FuzzName ./policy` explores further. Each checks
// an invariant, not only the absence of a panic.

// FuzzParseBytes: a size that parses is within 0..4 EiB and its canonical
// form parses back to the same size.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"256MiB", "1g", "1024", "0", "1.5k", "100MB", "4194304TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := policy.ParseBytes(s)
		if err != nil {
			return
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil && policy.Bytes(n) != b {
			t.Fatalf("ParseBytes(%q) = %d, not the number itself", s, int64(b))
		}
		if b < 0 || b > 1<<62 {
			t.Fatalf("ParseBytes(%q) = %d, outside 0..4EiB", s, int64(b))
		}
		again, err := policy.ParseBytes(b.String())
		if err != nil || again != b {
			t.Fatalf("ParseBytes(%q) = %d, formatted %q, which parses to %d, %v", s, int64(b), b.String(), int64(again), err)
		}
	})
}

// FuzzBytesJSON: a size that decodes from JSON is non-negative and
// survives encode → decode unchanged.
func FuzzBytesJSON(f *testing.F) {
	for _, s := range []string{`"256MiB"`, `1024`, `-1`, `1e3`, `"1.5G"`, `null`, `"x"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var b policy.Bytes
		if err := json.Unmarshal(data, &b); err != nil {
			return
		}
		if b < 0 || b > 1<<62 {
			t.Fatalf("%s decodes to %d, outside 0..4EiB", data, int64(b))
		}
		enc, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		var again policy.Bytes
		if err := json.Unmarshal(enc, &again); err != nil || again != b {
			t.Fatalf("%s decodes to %d, encodes to %s, which decodes to %d, %v", data, int64(b), enc, int64(again), err)
		}
	})
}

// FuzzDurationJSON: a duration that decodes from JSON is non-negative and
// survives encode → decode unchanged.
func FuzzDurationJSON(f *testing.F) {
	for _, s := range []string{`"30s"`, `"15m"`, `90`, `0.5`, `-1`, `"-1s"`, `"1h2m3.5s"`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var d policy.Duration
		if err := json.Unmarshal(data, &d); err != nil {
			return
		}
		if d < 0 {
			t.Fatalf("%s decodes to a negative duration %d", data, int64(d))
		}
		enc, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var again policy.Duration
		if err := json.Unmarshal(enc, &again); err != nil || again != d {
			t.Fatalf("%s decodes to %d, encodes to %s, which decodes to %d, %v", data, int64(d), enc, int64(again), err)
		}
	})
}

// FuzzAllowedHost: an allowlist entry that parses has a canonical form
// that parses to the same entry; an entry the default policy accepts
// never matches an address in a denied range (loopback, link-local and
// metadata, private, ...) nor the name localhost; names match whatever
// their case and trailing dot; a wildcard never matches its bare domain.
func FuzzAllowedHost(f *testing.F) {
	for _, s := range []struct {
		entry string
		addr  []byte
		port  uint16
		name  string
	}{
		{"api.github.com", []byte{140, 82, 112, 6}, 443, "API.GitHub.com."},
		{"*.pypi.org:443", []byte{151, 101, 0, 223}, 443, "files.pypi.org"},
		{"0.0.0.0/0", []byte{169, 254, 169, 254}, 80, "metadata"},
		{"169.254.169.254", []byte{169, 254, 169, 254}, 80, "metadata.google.internal"},
		{"::ffff:0:0/96", []byte{127, 0, 0, 1}, 22, "localhost"},
		{"::ffff:10.0.0.1", netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(), 80, "x"},
		{"2002::/16", netip.MustParseAddr("2002:7f00:1::").AsSlice(), 443, "y"},
		{"[2606:4700::1111]:443", netip.MustParseAddr("2606:4700::1111").AsSlice(), 443, "one.one.one.one"},
		{"8.0.0.0/7", []byte{9, 9, 9, 9}, 53, "dns.quad9.net"},
		{"localhost:8080", []byte{127, 0, 0, 1}, 8080, "LOCALHOST"},
	} {
		f.Add(s.entry, s.addr, s.port, s.name)
	}
	f.Fuzz(func(t *testing.T, entry string, addrBytes []byte, port uint16, name string) {
		h, err := policy.ParseHost(entry)
		if err != nil {
			return
		}
		canon, err := policy.ParseHost(h.String())
		if err != nil || canon != h {
			t.Fatalf("ParseHost(%q) = %+v, canonical %q, which parses to %+v, %v", entry, h, h.String(), canon, err)
		}
		if h.Name != "" {
			// Host names are ASCII; case folding beyond it is not DNS's.
			upper := strings.Map(func(r rune) rune {
				if r >= 'a' && r <= 'z' {
					return r - 'a' + 'A'
				}
				return r
			}, name) + "."
			if !strings.HasSuffix(name, ".") && h.MatchName(name, int(port)) != h.MatchName(upper, int(port)) {
				t.Fatalf("%q matches %q and %q differently", entry, name, upper)
			}
			if h.Wildcard && h.MatchName(h.Name, int(port)) {
				t.Fatalf("wildcard %q matches its bare domain", entry)
			}
		}

		_, err = policy.DefaultConfig().Resolve(policy.Policy{Network: policy.Network{
			Mode: policy.NetworkAllowlist, AllowedHosts: []string{entry},
		}})
		if err != nil {
			return // refused: it allows nothing
		}
		if h.MatchName("localhost", int(port)) || h.MatchName("a.localhost", int(port)) {
			t.Fatalf("accepted entry %q matches localhost", entry)
		}
		addr, ok := netip.AddrFromSlice(addrBytes)
		if !ok {
			return
		}
		for _, a := range []netip.Addr{addr, addr.Unmap(), netip.AddrFrom16(addr.As16())} {
			if policy.IsDenied(a) && (h.MatchAddr(a, int(port)) || h.MatchAddr(a, h.Port)) {
				t.Fatalf("accepted entry %q lets through denied address %s", entry, a)
			}
		}
	})
}
