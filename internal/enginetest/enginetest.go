// Package enginetest finds the container engines that tests run against. A
// suite whose engine is unreachable is skipped with a message saying how to
// enable it, unless CORRAL_REQUIRE_ENGINES is set (CI sets it), in which
// case it fails: in CI a missing engine is a failure, never a skip.
package enginetest

import (
	"os"
	"testing"
)

// TestImage is the image the engine suites run: busybox-static, imported
// locally by .ci/setup-docker.sh and .ci/setup-podman.sh (no registry is
// reachable from CI).
const TestImage = "corral-test-busybox:latest"

// Required reports whether missing engines must fail the tests.
func Required() bool { return os.Getenv("CORRAL_REQUIRE_ENGINES") != "" }

// Unavailable skips or fails t because engine cannot be used; how says what
// to run to make it available.
func Unavailable(t testing.TB, engine, how string, err error) {
	t.Helper()
	if Required() {
		t.Fatalf("%s is required (CORRAL_REQUIRE_ENGINES is set) but unavailable: %v", engine, err)
	}
	t.Skipf("%s unavailable (%v); to run this suite: %s", engine, err, how)
}
