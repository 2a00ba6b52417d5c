package enginetest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

// AssertUnavailable fails t unless err says the engine is unavailable, with
// the stable code "engine_unavailable", and a public message that names
// neither sock nor any unix: address.
func AssertUnavailable(t testing.TB, what string, err error, sock string) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrUnavailable) || errdefs.Code(err) != "engine_unavailable" {
		t.Fatalf("%s with the engine down: got %v (code %q), want engine_unavailable", what, err, errdefs.Code(err))
	}
	var e *errdefs.Error
	if !errors.As(err, &e) || strings.Contains(e.Message, sock) || strings.Contains(e.Message, "unix:") {
		t.Fatalf("%s: public message %q shows the engine's address", what, e.Message)
	}
}

// WorksAgain runs `cat f` until it stops failing with ErrUnavailable (at
// most 30 tries, a second apart, while an engine back from an outage works
// off its backlog) and checks that it prints "hi\n".
func WorksAgain(t testing.TB, what string, run func(string) (runtime.ExitResult, string, error)) {
	t.Helper()
	for i := 0; ; i++ {
		res, out, err := run("cat f")
		if errors.Is(err, errdefs.ErrUnavailable) && i < 30 {
			t.Logf("%s: %v; retrying", what, err)
			time.Sleep(time.Second)
			continue
		}
		if err != nil || res.ExitCode != 0 || out != "hi\n" {
			t.Fatalf("%s: %v %+v %q", what, err, res, out)
		}
		return
	}
}
