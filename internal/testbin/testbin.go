// Package testbin builds the corral binary for tests that need a real one:
// drivers run it as `corral init` inside sandboxes, and the server tests run
// `corral serve`. It is built once per test process, static (CGO_ENABLED=0)
// whatever the test binary itself was built with, so it runs in any image.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Tags are the build tags every build of corral uses (see the Makefile).
const Tags = "remote exclude_graphdriver_btrfs containers_image_openpgp"

var (
	once sync.Once
	path string
	err  error
	out  []byte
)

// Corral returns the path of a freshly built static corral binary. Binaries
// live in one shared directory, one per test process (corral-PID); those of
// processes that have exited are removed, so test runs leave nothing behind
// but the newest few.
func Corral(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir := filepath.Join(os.TempDir(), "corral-testbin")
		if err = os.MkdirAll(dir, 0o755); err != nil {
			return
		}
		// Rootless engines read the binary as another user.
		if err = os.Chmod(dir, 0o755); err != nil {
			return
		}
		removeStale(dir)
		path = filepath.Join(dir, "corral-"+strconv.Itoa(os.Getpid()))
		cmd := exec.Command("go", "build", "-tags", Tags, "-o", path, "./cmd/corral")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("build corral: %v\n%s", err, out)
	}
	return path
}

// removeStale deletes the binaries of test processes that no longer run.
func removeStale(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		name := strings.TrimPrefix(strings.TrimPrefix(e.Name(), "corral-"), "netprobe-")
		pid, perr := strconv.Atoi(name)
		if perr != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

var (
	probeOnce sync.Once
	probePath string
	probeErr  error
	probeOut  []byte
)

// NetProbe returns the path of a freshly built static netprobe (see
// internal/testbin/netprobe), the network isolation suite's helper, in the
// same shared directory as Corral's binaries (netprobe-PID).
func NetProbe(t testing.TB) string {
	t.Helper()
	probeOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		dir := filepath.Join(os.TempDir(), "corral-testbin")
		if probeErr = os.MkdirAll(dir, 0o755); probeErr != nil {
			return
		}
		removeStale(dir)
		probePath = filepath.Join(dir, "netprobe-"+strconv.Itoa(os.Getpid()))
		cmd := exec.Command("go", "build", "-o", probePath, "./netprobe")
		cmd.Dir = filepath.Dir(file)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		probeOut, probeErr = cmd.CombinedOutput()
	})
	if probeErr != nil {
		t.Fatalf("build netprobe: %v\n%s", probeErr, probeOut)
	}
	return probePath
}
