package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/corralhq/corral/errdefs"
)

// A server-side error shows clients its code and the message of its classed
// root, never the chain around it, which carries engine URLs and paths.
func TestServerErrorsHideInternals(t *testing.T) {
	engineErr := fmt.Errorf("exec in ws_1: %w", fmt.Errorf("Post \"http://d/v1.41/exec\": dial unix /var/run/docker.sock: %w",
		errdefs.New(errdefs.ErrUnavailable, "engine_unavailable", "the docker engine is not answering; try again later")))
	for name, c := range map[string]struct {
		err        error
		status     int
		code, want string
	}{
		"engine down": {engineErr, 503, "engine_unavailable", "the docker engine is not answering; try again later"},
		"unclassed":   {fmt.Errorf("open /srv/corral/x: permission denied"), 500, "internal", internalError.Message},
		"bare class":  {fmt.Errorf("dial unix /run/x.sock: %w", errdefs.ErrUnavailable), 503, "unavailable", "Service Unavailable; see the server log"},
	} {
		s := New(Config{})
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		status, d := s.publicError(r, c.err)
		if status != c.status || d.Code != c.code || d.Message != c.want {
			t.Errorf("%s: %d %+v, want %d %s %q", name, status, d, c.status, c.code, c.want)
		}
		if strings.Contains(d.Message, "sock") || strings.Contains(d.Message, "http://") {
			t.Errorf("%s: message shows internals: %q", name, d.Message)
		}
	}
}

// A request cut off by a shutdown's drain deadline answers 503
// shutting_down, whatever error its handler saw.
func TestShutdownCutOffAnswersShuttingDown(t *testing.T) {
	base, cutOff := context.WithCancelCause(context.Background())
	cutOff(ErrShuttingDown)
	r := httptest.NewRequest(http.MethodPost, "/workspaces/ws_1/execute", nil).WithContext(base)
	status, d := New(Config{}).publicError(r, fmt.Errorf("wait for command: %w", context.Canceled))
	if status != 503 || d.Code != "shutting_down" {
		t.Fatalf("cut-off request: %d %+v, want 503 shutting_down", status, d)
	}
}
