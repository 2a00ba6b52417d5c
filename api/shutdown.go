package api

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/errdefs"
)

// ErrShuttingDown is the cause of the requests a shutdown cuts off at its
// drain deadline: they are answered 503 with the code "shutting_down".
// Serve with a BaseContext that is cancelled with it (context.CancelCauseFunc).
var ErrShuttingDown = errdefs.New(errdefs.ErrUnavailable, "shutting_down", "the server is shutting down; retry the request")

// shutdownReason is the close reason of the sockets a shutdown closes,
// sent with status 1001 (going away). Under 123 bytes.
const shutdownReason = "server shutting down, reconnect"

// sockets tracks the open WebSockets so a shutdown can close them properly.
type sockets struct {
	mu      sync.Mutex
	open    map[*websocket.Conn]struct{}
	closing bool
	active  sync.WaitGroup // handlers of open sockets still running
}

// track registers conn until ctx (the request's) ends. It returns false,
// having closed conn with 1001, if the server is shutting down.
func (ss *sockets) track(ctx context.Context, conn *websocket.Conn) bool {
	ss.mu.Lock()
	if ss.closing {
		ss.mu.Unlock()
		conn.Close(websocket.StatusGoingAway, shutdownReason)
		return false
	}
	if ss.open == nil {
		ss.open = map[*websocket.Conn]struct{}{}
	}
	ss.open[conn] = struct{}{}
	ss.active.Add(1)
	ss.mu.Unlock()
	// A hijacked request's context ends when its handler has returned.
	context.AfterFunc(ctx, func() {
		ss.mu.Lock()
		delete(ss.open, conn)
		ss.mu.Unlock()
		ss.active.Done()
	})
	return true
}

// CloseSockets closes every open WebSocket (exec and conversation streams)
// with status 1001 and the reason "server shutting down, reconnect", and
// refuses new ones the same way. Call it when a shutdown begins: HTTP
// servers do not wait for, or close, upgraded connections. It returns when
// the sockets' handlers have returned (their commands killed) or ctx is
// done.
func (s *Server) CloseSockets(ctx context.Context) {
	s.sockets.mu.Lock()
	s.sockets.closing = true
	conns := make([]*websocket.Conn, 0, len(s.sockets.open))
	for c := range s.sockets.open {
		conns = append(conns, c)
	}
	s.sockets.mu.Unlock()
	for _, c := range conns {
		go c.Close(websocket.StatusGoingAway, shutdownReason)
	}
	done := make(chan struct{})
	go func() {
		s.sockets.active.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	if len(conns) > 0 {
		s.log.Info("closed sockets for shutdown", "count", len(conns))
	}
}

// shutdownCause returns ErrShuttingDown if r was cut off by a shutdown's
// drain deadline, else err.
func shutdownCause(r *http.Request, err error) error {
	if r.Context().Err() != nil && errors.Is(context.Cause(r.Context()), ErrShuttingDown) {
		return ErrShuttingDown
	}
	return err
}
