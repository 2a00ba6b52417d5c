package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
	"github.com/corralhq/corral/workspace"
)

// CloseResume closes a conversation stream whose client fell too far
// behind: it should reconnect at once with ?after= its last seq (the
// reason says "resume after=N"). After 1001 (server going away) or 1011 a
// client may reconnect the same way, with backoff; after 4400, 4401 or 4404
// it should not.
const CloseResume websocket.StatusCode = 4100

// streamWriteTimeout bounds one frame's write to a stream client: one that
// reads nothing for this long is dropped and may resume.
const streamWriteTimeout = 10 * time.Second

// CreateConversationRequest is the body of POST /conversations: either an
// existing workspace or a new one, as POST /workspaces takes it.
type CreateConversationRequest struct {
	WorkspaceID string                  `json:"workspace_id,omitempty"`
	Workspace   *workspace.Spec         `json:"workspace,omitempty"`
	LLM         *conversation.LLMConfig `json:"llm,omitempty"`
}

// ConversationList is a page of conversations.
type ConversationList struct {
	Conversations []conversation.Info `json:"conversations"`
	// NextAfter is the cursor of the next page (?after=), "" at the end.
	NextAfter string `json:"next_after"`
}

// MessageRequest is the body of POST /conversations/{id}/messages.
type MessageRequest struct {
	Content string `json:"content"`
}

// EventList is a page of a conversation's events.
type EventList struct {
	Events []store.Event `json:"events"`
	// NextAfter is the ?after= of the next page: the last seq returned, or
	// the given after if there was nothing new.
	NextAfter int64 `json:"next_after"`
}

// StreamFrame is a frame of the conversation stream: first a "snapshot"
// (the conversation's state and last seq when the stream began), then one
// "event" per event, in seq order.
type StreamFrame struct {
	Type         string             `json:"type"` // snapshot or event
	Conversation *conversation.Info `json:"conversation,omitempty"`
	*store.Event
	// Error is set in an "error" frame, the last before an error close.
	Error *ErrorDetail `json:"error,omitempty"`
}

// conversationRoutes serves /conversations under the authenticated router;
// the stream, which authenticates itself, is mounted outside it.
func (s *Server) conversationRoutes(r chi.Router) {
	svc := s.conversations
	r.Post("/", s.createConversation)
	r.Get("/", s.listConversations)
	r.Route("/{id}", func(r chi.Router) {
		r.Get("/", func(w http.ResponseWriter, r *http.Request) {
			c, err := svc.Get(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"))
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			writeJSON(w, http.StatusOK, conversation.InfoOf(c))
		})
		r.Delete("/", func(w http.ResponseWriter, r *http.Request) {
			if err := svc.Delete(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id")); err != nil {
				s.writeError(w, r, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		})
		r.Post("/messages", func(w http.ResponseWriter, r *http.Request) {
			var req MessageRequest
			if !s.readJSON(w, r, &req) {
				return
			}
			ev, err := svc.Send(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"), req.Content)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			writeJSON(w, http.StatusAccepted, ev)
		})
		r.Post("/interrupt", func(w http.ResponseWriter, r *http.Request) {
			c, err := svc.Interrupt(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"))
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			writeJSON(w, http.StatusOK, conversation.InfoOf(c))
		})
		r.Get("/events", s.conversationEvents)
	})
}

func (s *Server) createConversation(w http.ResponseWriter, r *http.Request) {
	svc := s.conversations
	var req CreateConversationRequest
	if !s.readJSON(w, r, &req) {
		return
	}
	if (req.WorkspaceID == "") == (req.Workspace == nil) {
		s.writeError(w, r, errdefs.Invalid("invalid_conversation", "give exactly one of workspace_id and workspace"))
		return
	}
	user := userFrom(r.Context())
	p := conversation.CreateParams{WorkspaceID: req.WorkspaceID}
	if req.LLM != nil {
		p.LLM = *req.LLM
	}
	created := false
	if req.Workspace != nil {
		ws, err := s.workspaces.Create(r.Context(), user, *req.Workspace, nil)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		p.WorkspaceID, created = ws.ID, true
	}
	c, err := svc.Create(r.Context(), user.ID, p)
	if err != nil {
		if created {
			// The workspace was made for this conversation only.
			if derr := s.workspaces.Delete(context.WithoutCancel(r.Context()), user.ID, p.WorkspaceID); derr != nil {
				err = fmt.Errorf("%w (and removing its new workspace %s failed: %v)", err, p.WorkspaceID, derr)
			}
		}
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/conversations/"+c.ID)
	writeJSON(w, http.StatusCreated, conversation.InfoOf(c))
}

func (s *Server) listConversations(w http.ResponseWriter, r *http.Request) {
	svc := s.conversations
	after, limit, err := pageParams(r)
	if err == nil {
		err = checkCursor(after, "cv")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cs, err := svc.List(r.Context(), userFrom(r.Context()).ID, after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := ConversationList{Conversations: make([]conversation.Info, len(cs))}
	for i, c := range cs {
		out.Conversations[i] = conversation.InfoOf(c)
	}
	if len(cs) == limit {
		out.NextAfter = cs[len(cs)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

// seqParam reads ?after= as a sequence number (default 0).
func seqParam(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("after")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errdefs.Invalid("invalid_after", "after must be a sequence number >= 0")
	}
	return n, nil
}

func (s *Server) conversationEvents(w http.ResponseWriter, r *http.Request) {
	svc := s.conversations
	after, err := seqParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	_, limit, err := pageParams(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	evs, err := svc.Events(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"), after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	next := after
	if len(evs) > 0 {
		next = evs[len(evs)-1].Seq
	}
	writeJSON(w, http.StatusOK, EventList{Events: evs, NextAfter: next})
}

// conversationStream serves GET /conversations/{id}/stream?after=SEQ, a
// WebSocket that authenticates itself (header or first frame, like the exec
// socket), so it is mounted outside the authenticated router. It sends a snapshot frame, then every event with seq > after (stored ones,
// then live ones) in order, pings every 15 s, and closes with CloseResume
// when the client falls too far behind, 1001 when the server shuts down,
// 4404 when the conversation is deleted.
func (s *Server) conversationStream(w http.ResponseWriter, r *http.Request) {
	svc := s.conversations
	id := chi.URLParam(r, "id")
	after, err := seqParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var sub *conversation.Subscription
	conn, _ := s.acceptSocket(w, r, func(u store.User) error {
		var err error
		sub, err = svc.Subscribe(r.Context(), u.ID, id, after)
		return err
	})
	if conn == nil {
		if sub != nil {
			sub.Close()
		}
		return
	}
	defer conn.CloseNow()
	defer sub.Close()
	// Nothing is read after the handshake; CloseRead answers pings and
	// notices the client leaving.
	ctx := conn.CloseRead(r.Context())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go heartbeat(ctx, conn, cancel)

	snap := sub.Snapshot()
	info := conversation.InfoOf(snap.Conversation)
	if err := writeStreamFrame(ctx, conn, StreamFrame{Type: "snapshot", Conversation: &info}); err != nil {
		return
	}
	for {
		e, err := sub.Next(ctx)
		if err != nil {
			s.closeStream(r, conn, sub, err)
			return
		}
		if err := writeStreamFrame(ctx, conn, StreamFrame{Type: "event", Event: &e}); err != nil {
			if ctx.Err() == nil {
				// Stalled: it may come back and resume.
				conn.Close(CloseResume, fmt.Sprintf("write timed out; resume after=%d", sub.Last()-1))
			}
			return
		}
	}
}

func writeStreamFrame(ctx context.Context, conn *websocket.Conn, f StreamFrame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode stream frame: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, streamWriteTimeout)
	defer cancel()
	return conn.Write(wctx, websocket.MessageText, b)
}

// closeStream closes a stream with the code that tells the client whether
// and where to resume.
func (s *Server) closeStream(r *http.Request, conn *websocket.Conn, sub *conversation.Subscription, err error) {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client left or stopped answering pings.
	case errors.Is(err, conversation.ErrLagged):
		conn.Close(CloseResume, fmt.Sprintf("lagged; resume after=%d", sub.Last()))
	case errors.Is(err, errdefs.ErrUnavailable):
		conn.Close(websocket.StatusGoingAway, fmt.Sprintf("server shutting down; resume after=%d", sub.Last()))
	default:
		s.failSocket(r, conn, err)
	}
}
