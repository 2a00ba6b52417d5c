package docker

import (
	"context"
	"testing"

	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/runtimetest"
)

// TestConformanceRemoteSignals runs the conformance suite as if the engine
// were on another machine: signals, timeouts and cancellation then reach
// commands through a shell inside the workspace instead of the host's kill.
func TestConformanceRemoteSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	opts := enginetest.Docker(t)
	d, err := Open(context.Background(), runtime.Config{
		ServerID: "corraltest-remote",
		InitPath: testbin.Corral(t),
		Options:  opts,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.local = false
	runtimetest.Run(t, d, runtimetest.Options{Image: enginetest.TestImage})
}
