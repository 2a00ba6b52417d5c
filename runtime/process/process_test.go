package process_test

import (
	"context"
	"testing"

	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/process"
	"github.com/corralhq/corral/runtime/runtimetest"
	"github.com/hashicorp/go-hclog"
)

// open opens a driver on a fresh data dir.
func open(t testing.TB, dataDir string) runtime.Runtime {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	rt, err := process.New(runtime.Config{
		DataDir:  dataDir,
		ServerID: "test",
		InitPath: testbin.Corral(t),
		Logger:   hclog.New(&hclog.LoggerOptions{Level: hclog.Warn}),
	})
	if err != nil {
		t.Fatalf("open process runtime: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

func TestConformance(t *testing.T) {
	rt := open(t, "")
	t.Logf("capabilities: %+v", rt.Capabilities())
	runtimetest.Run(t, rt, runtimetest.Options{})
}

var _ = context.Background
