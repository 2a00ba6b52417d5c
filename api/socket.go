package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
)

// WebSocket close codes, besides the standard ones. A client should not
// retry after 4400, 4401 or 4404; after 1001 or 1011 it may.
const (
	CloseBadRequest      websocket.StatusCode = 4400
	CloseUnauthenticated websocket.StatusCode = 4401
	CloseNotFound        websocket.StatusCode = 4404
)

const (
	authFrameTimeout = 10 * time.Second
	heartbeatEvery   = 15 * time.Second
)

// authFrame is the first frame of a socket whose client could not send an
// Authorization header (browsers).
type authFrame struct {
	Type string `json:"type"` // "auth"
	Key  string `json:"key"`
}

// acceptSocket authenticates a WebSocket request and upgrades it. A key in
// the headers is checked before the upgrade (401 on failure); without one
// the first frame must be {"type":"auth","key":"..."}. check, called with
// the user, answers errors such as "not found" before the socket is used.
// On failure acceptSocket has answered the client and returns a nil conn.
func (s *Server) acceptSocket(w http.ResponseWriter, r *http.Request, check func(store.User) error) (*websocket.Conn, store.User) {
	var user store.User
	headerKey := keyFrom(r)
	if headerKey != "" {
		u, err := s.authKey(r.Context(), headerKey)
		if err == nil {
			err = check(u)
		}
		if err != nil {
			s.writeError(w, r, err)
			return nil, store.User{}
		}
		user = u
	}
	// Keys, not cookies, authenticate: a page on another origin gains
	// nothing it does not already hold, so any origin may connect.
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return nil, store.User{}
	}
	if !s.sockets.track(r.Context(), conn) {
		return nil, store.User{}
	}
	if headerKey != "" {
		return conn, user
	}
	ctx, cancel := context.WithTimeout(r.Context(), authFrameTimeout)
	defer cancel()
	var f authFrame
	_, data, err := conn.Read(ctx)
	if err == nil {
		err = unmarshalFrame(data, &f)
	}
	if err != nil || f.Type != "auth" {
		s.failSocket(r, conn, errdefs.New(errdefs.ErrUnauthenticated, "unauthenticated", "first frame must be {\"type\":\"auth\",\"key\":\"...\"}"))
		return nil, store.User{}
	}
	u, err := s.authKey(r.Context(), f.Key)
	if err == nil {
		err = check(u)
	}
	if err != nil {
		s.failSocket(r, conn, err)
		return nil, store.User{}
	}
	return conn, u
}

// socketErrorFrame is the last frame before a 4xxx (or 1011) close: the
// same code and message as an HTTP error answer, for clients to show.
type socketErrorFrame struct {
	Type  string      `json:"type"` // "error"
	Error ErrorDetail `json:"error"`
}

// failSocket sends err as an error frame, then closes conn with the close
// code of err's class (closeWithError). Every error close of Corral's
// sockets goes through it, so clients can rely on the frame.
func (s *Server) failSocket(r *http.Request, conn *websocket.Conn, err error) {
	_, d := s.publicError(r, err)
	if b, merr := json.Marshal(socketErrorFrame{Type: "error", Error: d}); merr == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), authFrameTimeout)
		_ = conn.Write(ctx, websocket.MessageText, b)
		cancel()
	}
	s.closeWithError(conn, err)
}

// closeWithError closes conn with the close code that matches err's class
// and a reason under WebSocket's 123-byte limit.
func (s *Server) closeWithError(conn *websocket.Conn, err error) {
	code := websocket.StatusInternalError
	switch {
	case errors.Is(err, errdefs.ErrUnauthenticated):
		code = CloseUnauthenticated
	case errors.Is(err, errdefs.ErrNotFound):
		code = CloseNotFound
	case statusOf(err) < 500:
		code = CloseBadRequest
	default:
		s.log.Error("socket failed", "error", err)
	}
	reason := errdefs.Code(err)
	if len(reason) > 120 {
		reason = reason[:120]
	}
	conn.Close(code, reason)
}

// heartbeat pings the peer until ctx is done, and cancels the socket's
// context (through cancel) when a ping goes unanswered.
func heartbeat(ctx context.Context, conn *websocket.Conn, cancel context.CancelFunc) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, pcancel := context.WithTimeout(ctx, heartbeatEvery)
			err := conn.Ping(pctx)
			pcancel()
			if err != nil {
				cancel()
				return
			}
		}
	}
}
