package api

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// DefaultBodyIdleTimeout is how long a request body may go without sending
// a byte before the server gives up on it (Config.BodyIdleTimeout).
const DefaultBodyIdleTimeout = 30 * time.Second

// errRequestTimeout classes a request whose body did not arrive in time;
// statusOf maps it to 408.
var errRequestTimeout = errors.New("request timeout")

// errBodyTimeout is what a handler's read of a stalled body returns.
var errBodyTimeout = errdefs.New(errRequestTimeout, "body_timeout",
	"the request body stalled: no data for too long")

// bodyDeadline gives every request body an idle read deadline: each Read
// must make progress within idle, so a client that stops sending (a slow
// loris) cannot hold a handler, its workspace lock or an upload slot
// forever, while an honest upload of any size, however long it takes in
// all, keeps going as long as bytes keep coming. The deadline is lifted at
// the end of the body: after that the server's own background read
// watches the connection, and a deadline there would cancel the request's
// context under a long-running command.
func (s *Server) bodyDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		r.Body = &idleBody{ReadCloser: r.Body, rc: rc, idle: s.bodyIdle}
		next.ServeHTTP(w, r)
	})
}

// idleBody sets the connection's read deadline before each Read of the body.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	done bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	// An error means the connection cannot have deadlines (a test
	// recorder, for instance): read without one.
	armed := b.rc.SetReadDeadline(time.Now().Add(b.idle)) == nil
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == nil || !armed:
	case err == io.EOF:
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The deadline stays: net/http reads what is left of a body
		// before it answers, and must not wait for this client either.
		b.done = true
		return n, errBodyTimeout
	}
	return n, err
}
