package policy_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
)

func TestResolveFillsDefaults(t *testing.T) {
	c := policy.DefaultConfig()
	got, err := c.Resolve(policy.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	d := c.Defaults
	want := policy.Policy{
		Limits: policy.Limits{
			Memory: d.Memory, CPUs: d.CPUs, Pids: d.Pids, Disk: d.Disk, NoFile: d.NoFile,
			Timeout: d.Timeout, IdleTimeout: d.IdleTimeout, Lifetime: d.Lifetime,
			Upload: d.Upload, Output: d.Output,
		},
		Network: policy.Network{Mode: policy.NetworkOpen},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Resolve({}) = %+v\nwant %+v", got, want)
	}
	if got.Limits.Memory != 1<<30 || got.Limits.Pids != 512 || got.Limits.Timeout != policy.Duration(time.Minute) {
		t.Fatalf("documented defaults changed: %+v", got.Limits)
	}

	// What a request sets is kept; the rest is filled.
	got, err = c.Resolve(policy.Policy{Limits: policy.Limits{Memory: 256 << 20, CPUs: 0.5}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Limits.Memory != 256<<20 || got.Limits.CPUs != 0.5 || got.Limits.Pids != d.Pids {
		t.Fatalf("explicit limits not kept: %+v", got.Limits)
	}

	// The operator's default network mode, and open when none is set.
	c.DefaultNetwork = policy.NetworkNone
	if got, _ := c.Resolve(policy.Policy{}); got.Network.Mode != policy.NetworkNone {
		t.Fatalf("default mode %q, want none", got.Network.Mode)
	}
	c.DefaultNetwork = ""
	if got, _ := c.Resolve(policy.Policy{}); got.Network.Mode != policy.NetworkOpen {
		t.Fatalf("mode with no default %q, want open", got.Network.Mode)
	}
}

func TestResolveRefuses(t *testing.T) {
	c := policy.DefaultConfig()
	for _, tc := range []struct {
		name string
		req  policy.Policy
		code string
		msg  string
	}{
		{"negative cpus", policy.Policy{Limits: policy.Limits{CPUs: -1}}, "invalid_limit", "negative"},
		{"negative pids", policy.Policy{Limits: policy.Limits{Pids: -1}}, "invalid_limit", "negative"},
		{"negative nofile", policy.Policy{Limits: policy.Limits{NoFile: -5}}, "invalid_limit", "negative"},
		{"tiny memory", policy.Policy{Limits: policy.Limits{Memory: 1 << 20}}, "invalid_limit", "4MiB"},
		{"tiny disk", policy.Policy{Limits: policy.Limits{Disk: 1000}}, "invalid_limit", "1MiB"},
		{"memory over max", policy.Policy{Limits: policy.Limits{Memory: 9 << 30}}, "limit_exceeds_max", "memory limit 9GiB"},
		{"cpus over max", policy.Policy{Limits: policy.Limits{CPUs: 4.5}}, "limit_exceeds_max", "cpus"},
		{"pids over max", policy.Policy{Limits: policy.Limits{Pids: 5000}}, "limit_exceeds_max", "pids"},
		{"timeout over max", policy.Policy{Limits: policy.Limits{Timeout: policy.Duration(2 * time.Hour)}}, "limit_exceeds_max", "timeout"},
		{"output over max", policy.Policy{Limits: policy.Limits{Output: 17 << 20}}, "limit_exceeds_max", "output"},
		{"unknown mode", policy.Policy{Network: policy.Network{Mode: "bridge"}}, "invalid_network", "none, allowlist, open"},
		{"hosts with mode open", policy.Policy{Network: policy.Network{Mode: policy.NetworkOpen, AllowedHosts: []string{"a.test"}}}, "invalid_network", "allowlist"},
		{"hosts with mode none", policy.Policy{Network: policy.Network{Mode: policy.NetworkNone, AllowedHosts: []string{"a.test"}}}, "invalid_network", "allowlist"},
		{"bad host", policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"a.test", "no such host"}}}, "invalid_network", "no such host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Resolve(tc.req)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Resolve: %v (code %q), want invalid argument %q mentioning %q", err, errdefs.Code(err), tc.code, tc.msg)
			}
		})
	}
}

func TestResolveNoMaximum(t *testing.T) {
	c := policy.DefaultConfig()
	c.Max = policy.Limits{} // zero maximums: no maximum
	got, err := c.Resolve(policy.Policy{Limits: policy.Limits{Memory: 64 << 30, Lifetime: policy.Duration(1000 * time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Limits.Memory != 64<<30 || got.Limits.Lifetime != policy.Duration(1000*time.Hour) {
		t.Fatalf("limits %+v", got.Limits)
	}
}

func TestResolveAllowlist(t *testing.T) {
	c := policy.DefaultConfig()
	got, err := c.Resolve(policy.Policy{Network: policy.Network{
		Mode:         policy.NetworkAllowlist,
		AllowedHosts: []string{"API.GitHub.com", " *.PyPI.org:443 ", "203.0.113.7", "[2001:db8::1]:22"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"api.github.com", "*.pypi.org:443", "203.0.113.7", "[2001:db8::1]:22"}
	if !reflect.DeepEqual(got.Network.AllowedHosts, want) {
		t.Fatalf("allowed hosts %q, want the canonical %q", got.Network.AllowedHosts, want)
	}
	if got, err := c.Resolve(policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist}}); err != nil || len(got.Network.AllowedHosts) != 0 {
		t.Fatalf("empty allowlist (nothing reachable) should be valid: %+v, %v", got, err)
	}

	private := []string{"localhost", "db.localhost", "127.0.0.1", "[::1]:80", "10.0.0.0/8", "10.1.2.3",
		"169.254.169.254", "192.168.0.0/16", "172.20.0.5:5432", "fd00::1", "0.0.0.0/0", "::/0"}
	for _, h := range private {
		req := policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"ok.test", h}}}
		_, err := c.Resolve(req)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Code(err) != "host_not_allowed" || !strings.Contains(err.Error(), h) {
			t.Errorf("private host %q: %v (code %q), want host_not_allowed", h, err, errdefs.Code(err))
		}
	}
	// AllowPrivate opens other machines' private and link-local addresses,
	// never this machine (loopback, "localhost") nor an entry spanning it.
	local := map[string]bool{"localhost": true, "db.localhost": true, "127.0.0.1": true, "[::1]:80": true,
		"0.0.0.0/0": true, "::/0": true}
	c.AllowPrivate = true
	for _, h := range append(private, "127.0.0.0/8", "ff02::1", "224.0.0.1", "0.0.0.0") {
		req := policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{h}}}
		_, err := c.Resolve(req)
		if l := local[h] || !slices.Contains(private, h); l {
			if errdefs.Code(err) != "host_not_allowed" {
				t.Errorf("local host %q with AllowPrivate: %v, want host_not_allowed", h, err)
			}
		} else if err != nil {
			t.Errorf("private host %q with AllowPrivate: %v", h, err)
		}
	}
}

func TestCheck(t *testing.T) {
	p, err := policy.DefaultConfig().Resolve(policy.Policy{Network: policy.Network{Mode: policy.NetworkAllowlist}})
	if err != nil {
		t.Fatal(err)
	}
	all := policy.Support{Memory: true, CPU: true, Pids: true, Disk: true, NoFile: true, Network: policy.Modes}
	if err := policy.Check("docker", p, all); err != nil {
		t.Fatalf("everything supported: %v", err)
	}

	// A missing limit fails closed, naming the runtime, the features and why.
	s := all
	s.Memory, s.Pids = false, false
	s.Why = map[string]string{"memory": "rootless on cgroup v1"}
	err = policy.Check("podman", p, s)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "unsupported_limit" {
		t.Fatalf("Check: %v (code %q), want failed precondition unsupported_limit", err, errdefs.Code(err))
	}
	for _, want := range []string{`"podman"`, "memory (rootless on cgroup v1)", "pids"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not mention %q", err, want)
		}
	}

	// A limit that is not set needs no support.
	unset := p
	unset.Limits.Memory, unset.Limits.Pids = 0, 0
	if err := policy.Check("podman", unset, s); err != nil {
		t.Fatalf("unset limits refused: %v", err)
	}

	// A network mode the runtime cannot enforce.
	s = all
	s.Network = []policy.Mode{policy.NetworkNone, policy.NetworkOpen}
	s.Why = map[string]string{"network:allowlist": "no proxy configured"}
	err = policy.Check("process", p, s)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "unsupported_network" ||
		!strings.Contains(err.Error(), `"process"`) || !strings.Contains(err.Error(), `"allowlist"`) ||
		!strings.Contains(err.Error(), "no proxy configured") {
		t.Fatalf("Check: %v (code %q), want unsupported_network naming runtime, mode and why", err, errdefs.Code(err))
	}
	if !s.SupportsNetwork(policy.NetworkOpen) || s.SupportsNetwork(policy.NetworkAllowlist) {
		t.Fatal("SupportsNetwork disagrees with Network")
	}
}

func TestEnforceable(t *testing.T) {
	s := policy.Support{Memory: true, NoFile: true, Why: map[string]string{"cpu": "no cpu controller"}}
	l := policy.DefaultConfig().Defaults
	l.Disk = 1 << 30
	got, dropped := s.Enforceable(l)
	if got.Memory != l.Memory || got.NoFile != l.NoFile || got.CPUs != 0 || got.Pids != 0 || got.Disk != 0 || got.Timeout != l.Timeout {
		t.Fatalf("Enforceable = %+v", got)
	}
	if want := []string{"cpu (no cpu controller)", "pids", "disk"}; !reflect.DeepEqual(dropped, want) {
		t.Fatalf("dropped %q, want %q", dropped, want)
	}
	if err := policy.Check("x", policy.Policy{Limits: got, Network: policy.Network{Mode: policy.NetworkNone}},
		policy.Support{Memory: true, NoFile: true, Network: []policy.Mode{policy.NetworkNone}}); err != nil {
		t.Fatalf("enforceable limits refused by Check: %v", err)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]policy.Bytes{
		"0": 0, "1024": 1024, "512k": 512 << 10, "512KiB": 512 << 10, "1kb": 1000,
		"256MiB": 256 << 20, "256mb": 256e6, "1g": 1 << 30, "1 GiB": 1 << 30, "1.5GiB": 3 << 29,
		"2T": 2 << 40, "10B": 10, " 4MiB ": 4 << 20,
	} {
		got, err := policy.ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.2.3k", "12 parsecs", "1PiB", "99999999999TiB"} {
		if got, err := policy.ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", in, got)
		}
	}
}

func TestBytesString(t *testing.T) {
	for b, want := range map[policy.Bytes]string{
		0: "0", 1000: "1000", 1024: "1KiB", 256 << 20: "256MiB", 1 << 30: "1GiB", 3 << 29: "1536MiB", 2 << 40: "2TiB",
	} {
		if got := b.String(); got != want {
			t.Errorf("Bytes(%d).String() = %q, want %q", int64(b), got, want)
		}
		if back, err := policy.ParseBytes(want); err != nil || back != b {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", want, back, err, int64(b))
		}
	}
}

func TestLimitsJSON(t *testing.T) {
	var l policy.Limits
	in := `{"memory":"256MiB","cpus":0.5,"pids":128,"disk":1048576,"timeout":"30s","idle_timeout":900,"upload":"1GB"}`
	if err := json.Unmarshal([]byte(in), &l); err != nil {
		t.Fatal(err)
	}
	want := policy.Limits{Memory: 256 << 20, CPUs: 0.5, Pids: 128, Disk: 1 << 20,
		Timeout: policy.Duration(30 * time.Second), IdleTimeout: policy.Duration(15 * time.Minute), Upload: 1e9}
	if l != want {
		t.Fatalf("decoded %+v, want %+v", l, want)
	}
	out, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"memory":"256MiB","cpus":0.5,"pids":128,"disk":"1MiB","timeout":"30s","idle_timeout":"15m0s","upload":"1000000000"}`; string(out) != want {
		t.Fatalf("encoded %s\nwant    %s", out, want)
	}
	var back policy.Limits
	if err := json.Unmarshal(out, &back); err != nil || back != l {
		t.Fatalf("round trip: %+v, %v", back, err)
	}

	for _, bad := range []string{
		`{"memory":-1}`, `{"memory":"lots"}`, `{"memory":true}`, `{"disk":"-5MiB"}`,
		`{"timeout":-1}`, `{"timeout":"soon"}`, `{"timeout":"-3s"}`, `{"timeout":[1]}`,
	} {
		var l policy.Limits
		if err := json.Unmarshal([]byte(bad), &l); err == nil {
			t.Errorf("Unmarshal(%s) = %+v, want an error", bad, l)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	for in, want := range map[string]time.Duration{
		`"30s"`: 30 * time.Second, `"1h30m"`: 90 * time.Minute, `1.5`: 1500 * time.Millisecond, `0`: 0, `"0s"`: 0,
	} {
		var d policy.Duration
		if err := json.Unmarshal([]byte(in), &d); err != nil || time.Duration(d) != want {
			t.Errorf("Unmarshal(%s) = %v, %v; want %v", in, time.Duration(d), err, want)
		}
	}
	out, _ := json.Marshal(policy.Duration(90 * time.Second))
	if string(out) != `"1m30s"` {
		t.Fatalf("Marshal = %s", out)
	}
}
