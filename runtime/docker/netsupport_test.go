package docker

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/moby/moby/api/types/system"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// TestOpenRefused: where the server cannot firewall the engine's bridge,
// open is not offered, and a request for it is refused with the reason;
// --unsafe-shared-network keeps it, on the engine's shared bridge.
func TestOpenRefused(t *testing.T) {
	for _, tc := range []struct {
		name     string
		host     string
		local    bool
		rootless bool
		unsafe   bool
		want     string // in the refusal; "" = open offered
		isolated bool
	}{
		{"remote engine", "tcp://engine.example:2376", false, false, false, "not on this host", false},
		{"rootless engine", "unix:///run/user/1000/docker.sock", true, true, false, "rootless docker", false},
		{"remote engine, unsafe", "tcp://engine.example:2376", false, false, true, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Driver{log: hclog.NewNullLogger(), serverID: "srv_test", host: tc.host, local: tc.local,
				caps: capabilitiesFrom(system.Info{MemoryLimit: true, SwapLimit: true, PidsLimit: true}, tc.local)}
			d.setupOpen(runtime.NetworkConfig{UnsafeShared: tc.unsafe}, tc.rootless)
			s := d.caps.Policy
			if d.isolated() != tc.isolated {
				t.Errorf("isolated = %v, want %v", d.isolated(), tc.isolated)
			}
			p := policy.Policy{Network: policy.Network{Mode: policy.NetworkOpen}}
			err := policy.Check(Name, p, s)
			if tc.want == "" {
				if err != nil {
					t.Errorf("open refused: %v", err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "unsupported_network" || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check(open) = %v, want unsupported_network saying %q", err, tc.want)
			}
			if !s.SupportsNetwork(policy.NetworkNone) || !s.SupportsNetwork(policy.NetworkAllowlist) {
				t.Errorf("none or allowlist lost with open: %v", s.Network)
			}
		})
	}
}
