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
	"sync"
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

// Corral returns the path of a freshly built static corral binary.
func Corral(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, derr := os.MkdirTemp("", "corral-testbin-")
		if derr != nil {
			err = derr
			return
		}
		// Rootless engines read the binary as another user.
		if err = os.Chmod(dir, 0o755); err != nil {
			return
		}
		path = filepath.Join(dir, "corral")
		// The same tags as the Makefile: the podman bindings need them.
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
