package workspace

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// TestDefaultNetworkFallsBackToNone: a default network mode the runtime
// cannot enforce on this host becomes none, with a warning that says why,
// never a network the runtime cannot isolate; an enforceable one is kept.
func TestDefaultNetworkFallsBackToNone(t *testing.T) {
	dir := t.TempDir()
	// The process runtime with namespaces off cannot isolate open (or
	// anything): a host where the configured default is unenforceable.
	rt, err := runtime.Open("process", runtime.Config{
		DataDir: filepath.Join(dir, "runtime"), ServerID: "srv_defnet", InitPath: testbin.Corral(t),
		Options: map[string]string{"namespaces": "false"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if rt.Capabilities().Policy.SupportsNetwork(policy.NetworkOpen) {
		t.Fatal("the process runtime without namespaces claims it can isolate open")
	}
	for _, def := range []policy.Mode{policy.NetworkOpen, ""} {
		var logs bytes.Buffer
		log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn})
		pol := policy.DefaultConfig()
		pol.DefaultNetwork = def
		m := New(Config{Runtime: rt, Policy: pol, Logger: log})
		if got := m.policy.DefaultNetwork; got != policy.NetworkNone {
			t.Errorf("default %q on a runtime without open: got %q, want none", def, got)
		}
		if !strings.Contains(logs.String(), "default network mode") || !strings.Contains(logs.String(), "namespaces=false") {
			t.Errorf("no warning naming the reason; log:\n%s", logs.String())
		}
		resolved, err := m.policy.Resolve(policy.Policy{})
		if err != nil || resolved.Network.Mode != policy.NetworkNone {
			t.Errorf("a request naming no mode resolves to %q (%v), want none", resolved.Network.Mode, err)
		}
	}

	// Where open can be enforced (the process runtime as root), it stays.
	full, err := runtime.Open("process", runtime.Config{
		DataDir: filepath.Join(dir, "runtime2"), ServerID: "srv_defnet_open", InitPath: testbin.Corral(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		full.Close()
		for _, x := range nettest.Leftovers("srv_defnet_open") {
			t.Errorf("%s left behind", x)
		}
	})
	if !full.Capabilities().Policy.SupportsNetwork(policy.NetworkOpen) {
		t.Skipf("the process runtime cannot isolate open here: %s", full.Capabilities().Policy.Why["network:open"])
	}
	if got := enforceableDefaultNetwork(policy.NetworkOpen, full, hclog.NewNullLogger()); got != policy.NetworkOpen {
		t.Errorf("enforceable default open became %q", got)
	}
}
