package runtimetest_test

// Scratch: not committed. Runs RunNetwork against each driver.

import (
	"os"
	"testing"

	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/runtime"
	_ "github.com/corralhq/corral/runtime/docker"
	_ "github.com/corralhq/corral/runtime/podman"
	_ "github.com/corralhq/corral/runtime/process"
	"github.com/corralhq/corral/runtime/runtimetest"
	"github.com/hashicorp/go-hclog"
)

func scratchOpen(t *testing.T, name string, opts map[string]string) runtime.Runtime {
	rt, err := runtime.Open(name, runtime.Config{DataDir: t.TempDir(), ServerID: "scratchnet", InitPath: testbin.Corral(t), Options: opts,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	t.Logf("caps %+v", rt.Capabilities())
	return rt
}

func TestScratchNetProcess(t *testing.T) {
	runtimetest.RunNetwork(t, scratchOpen(t, "process", nil), "")
}
func TestScratchNetDocker(t *testing.T) {
	runtimetest.RunNetwork(t, scratchOpen(t, "docker", enginetest.Docker(t)), enginetest.TestImage)
}
func TestScratchNetPodman(t *testing.T) {
	runtimetest.RunNetwork(t, scratchOpen(t, "podman", enginetest.Podman(t, false)), enginetest.TestImage)
}
func TestScratchNetPodmanRootless(t *testing.T) {
	runtimetest.RunNetwork(t, scratchOpen(t, "podman", enginetest.Podman(t, true)), enginetest.TestImage)
}
