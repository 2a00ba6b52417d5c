package workspace

import (
	"context"
	"math"
	"testing"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
)

// TestCreateOutOfRangeLimitsLeaveNothing: limits that arrive through the
// Go API (not JSON) out of range are refused as invalid_limit before
// anything is stored; none can produce a row that reads back broken.
func TestCreateOutOfRangeLimitsLeaveNothing(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	for name, l := range map[string]policy.Limits{
		"negative timeout":      {Timeout: -1},
		"negative idle timeout": {IdleTimeout: policy.Duration(math.MinInt64)},
		"negative lifetime":     {Lifetime: -5},
		"negative memory":       {Memory: -1},
		"negative disk":         {Disk: -1},
		"negative upload":       {Upload: -1},
		"negative output":       {Output: -1},
		"NaN cpus":              {CPUs: math.NaN()},
		"infinite cpus":         {CPUs: math.Inf(1)},
	} {
		_, err := h.mgr.Create(ctx, h.user, Spec{Limits: l}, nil)
		if errdefs.Code(err) != policy.CodeInvalidLimit {
			t.Errorf("%s: got %v, want invalid_limit", name, err)
		}
	}
	for name, l := range map[string]policy.Limits{
		"cpus above max":    {CPUs: math.MaxFloat64},
		"timeout above max": {Timeout: policy.Duration(math.MaxInt64)},
	} {
		_, err := h.mgr.Create(ctx, h.user, Spec{Limits: l}, nil)
		if errdefs.Code(err) != "limit_exceeds_max" {
			t.Errorf("%s: got %v, want limit_exceeds_max", name, err)
		}
	}
	h.wantNothingLeft(t)
}
