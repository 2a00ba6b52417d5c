package policy_test

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
)

func TestDurationRangeCheckedBeforeConversion(t *testing.T) {
	for _, in := range []string{`1e308`, `9223372037`, `9223372036.9`, `-1`, `-0.5`, `"-1s"`, `"NaN"`, `"Inf"`, `"9999999999h"`, `"soon"`, `true`, `{}`} {
		var d policy.Duration
		err := json.Unmarshal([]byte(in), &d)
		if errdefs.Code(err) != policy.CodeInvalidLimit {
			t.Errorf("%s: %v (value %d), want invalid_limit", in, err, d)
		}
	}
	for in, want := range map[string]time.Duration{
		`0`: 0, `1.5`: 1500 * time.Millisecond, `"30s"`: 30 * time.Second, `9223372036`: 9223372036 * time.Second,
		`"2562047h"`: 2562047 * time.Hour,
	} {
		var d policy.Duration
		if err := json.Unmarshal([]byte(in), &d); err != nil || time.Duration(d) != want || d < 0 {
			t.Errorf("%s: %v %v, want %v", in, time.Duration(d), err, want)
		}
	}
}

func TestBytesRangeCheckedBeforeConversion(t *testing.T) {
	for _, in := range []string{`1e308`, `9.3e18`, `9223372036854775807`, `-1`, `1.5`, `"-1MiB"`, `"NaN"`, `"99999999TiB"`, `"lots"`, `[]`} {
		var b policy.Bytes
		err := json.Unmarshal([]byte(in), &b)
		if errdefs.Code(err) != policy.CodeInvalidLimit {
			t.Errorf("%s: %v (value %d), want invalid_limit", in, err, b)
		}
	}
	for in, want := range map[string]policy.Bytes{`0`: 0, `1024`: 1024, `1e3`: 1000, `"1GiB"`: 1 << 30, `"4096TiB"`: 1 << 52} {
		var b policy.Bytes
		if err := json.Unmarshal([]byte(in), &b); err != nil || b != want {
			t.Errorf("%s: %d %v, want %d", in, b, err, want)
		}
	}
}

func TestCPUsAboveHostRefused(t *testing.T) {
	c := policy.DefaultConfig()
	c.HostCPUs = 2
	_, err := c.Resolve(policy.Policy{Limits: policy.Limits{CPUs: 3}})
	if errdefs.Code(err) != "limit_exceeds_host" {
		t.Fatalf("cpus 3 on 2 CPUs: %v", err)
	}
	// Above the maximum is reported as such, whatever the host has.
	if _, err := c.Resolve(policy.Policy{Limits: policy.Limits{CPUs: math.MaxFloat64}}); errdefs.Code(err) != "limit_exceeds_max" {
		t.Fatalf("cpus max float: %v", err)
	}
	if got, err := c.Resolve(policy.Policy{Limits: policy.Limits{CPUs: 2}}); err != nil || got.Limits.CPUs != 2 {
		t.Fatalf("cpus 2 on 2 CPUs: %+v %v", got, err)
	}
	// A default above the host is capped to it, never refused.
	c.HostCPUs = 1
	c.Defaults.CPUs = 4
	if got, err := c.Resolve(policy.Policy{}); err != nil || got.Limits.CPUs != 1 {
		t.Fatalf("default cpus on 1 CPU: %+v %v", got, err)
	}
}
