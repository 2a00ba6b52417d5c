package client

import (
	"context"
	"errors"
	"iter"
	"net/http"
	"net/url"
	"strconv"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/api/types"
)

// CreateConversation starts a conversation with an agent, in an existing
// workspace (req.WorkspaceID) or a new one (req.Workspace).
func (c *Client) CreateConversation(ctx context.Context, req types.CreateConversationRequest) (types.Conversation, error) {
	var cv types.Conversation
	err := c.call(ctx, request{method: http.MethodPost, path: "/conversations", json: req}, &cv)
	return cv, err
}

// Conversation returns a conversation by ID.
func (c *Client) Conversation(ctx context.Context, id string) (types.Conversation, error) {
	var cv types.Conversation
	err := c.call(ctx, request{method: http.MethodGet, path: "/conversations/" + url.PathEscape(id), idempotent: true}, &cv)
	return cv, err
}

// Conversations yields the caller's conversations, oldest first.
func (c *Client) Conversations(ctx context.Context) iter.Seq2[types.Conversation, error] {
	return func(yield func(types.Conversation, error) bool) {
		after := ""
		for {
			q := url.Values{"limit": {"100"}}
			if after != "" {
				q.Set("after", after)
			}
			var page types.ConversationList
			if err := c.call(ctx, request{method: http.MethodGet, path: "/conversations", query: q, idempotent: true}, &page); err != nil {
				yield(types.Conversation{}, err)
				return
			}
			for _, cv := range page.Conversations {
				if !yield(cv, nil) {
					return
				}
			}
			if page.NextAfter == "" || len(page.Conversations) == 0 {
				return
			}
			after = page.NextAfter
		}
	}
}

// Send sends the user's message; the agent starts working on it. It
// returns the message's event. Not retried once the server may have
// stored it.
func (c *Client) Send(ctx context.Context, id, content string) (types.Event, error) {
	var ev types.Event
	err := c.call(ctx, request{method: http.MethodPost, path: "/conversations/" + url.PathEscape(id) + "/messages",
		json: types.MessageRequest{Content: content}}, &ev)
	return ev, err
}

// Interrupt stops the agent's current turn; the conversation waits for
// the next message. Interrupting is idempotent.
func (c *Client) Interrupt(ctx context.Context, id string) (types.Conversation, error) {
	var cv types.Conversation
	err := c.call(ctx, request{method: http.MethodPost, path: "/conversations/" + url.PathEscape(id) + "/interrupt", idempotent: true}, &cv)
	return cv, err
}

// DeleteConversation stops the agent and deletes the conversation and its
// events (not its workspace).
func (c *Client) DeleteConversation(ctx context.Context, id string) error {
	return c.deleteIdempotent(ctx, "/conversations/"+url.PathEscape(id))
}

// ListEvents returns up to limit (1..1000; 0 is the server's default)
// stored events with seq > after.
func (c *Client) ListEvents(ctx context.Context, id string, after int64, limit int) (types.EventList, error) {
	q := url.Values{"after": {strconv.FormatInt(after, 10)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l types.EventList
	err := c.call(ctx, request{method: http.MethodGet, path: "/conversations/" + url.PathEscape(id) + "/events", query: q, idempotent: true}, &l)
	return l, err
}

// Events yields every event of a conversation with seq > after, once and
// in seq order, live as they happen, until ctx is done or the caller
// stops. It follows the conversation's stream and, when the stream ends
// for a reason that allows it (the server's 4100 "resume" close, its 1001
// shutdown, a restart, a lost connection), reconnects after the last seq
// it yielded, backing off while the server is away. It ends with an error
// when the conversation is gone (ErrNotFound), the key is refused, or ctx
// is done (ctx.Err()).
func (c *Client) Events(ctx context.Context, id string, after int64) iter.Seq2[types.Event, error] {
	return func(yield func(types.Event, error) bool) {
		last := after
		failures := 0
		for {
			err := c.stream(ctx, id, &last, &failures, yield)
			if err == nil {
				return // the caller stopped
			}
			if ctx.Err() != nil {
				yield(types.Event{}, ctx.Err())
				return
			}
			if c.onReconnect != nil {
				c.onReconnect(last, err)
			}
			var apiErr *Error
			if errors.As(err, &apiErr) && !errors.Is(err, ErrUnavailable) && apiErr.Status != http.StatusInternalServerError {
				yield(types.Event{}, err)
				return
			}
			if errors.Is(err, ErrResume) {
				failures = 0
				continue
			}
			failures++
			if werr := c.wait(ctx, min(failures, 8), 0); werr != nil {
				yield(types.Event{}, werr)
				return
			}
		}
	}
}

// ErrResume is why a conversation stream ended when the server closed it
// with 4100 (the client fell behind): Events reconnects at once.
var ErrResume = errors.New("corral: the server asked to resume the stream")

// stream follows one connection of the stream from *last, advancing it.
// It returns nil when yield asked to stop, else why the connection ended.
func (c *Client) stream(ctx context.Context, id string, last *int64, failures *int, yield func(types.Event, error) bool) error {
	conn, err := c.dial(ctx, "/conversations/"+url.PathEscape(id)+"/stream", url.Values{"after": {strconv.FormatInt(*last, 10)}})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(16 << 20)
	var detail *Error
	for {
		var f types.StreamFrame
		if err := readJSONFrame(ctx, conn, &f); err != nil {
			if websocket.CloseStatus(err) == closeResume {
				return ErrResume
			}
			if serr := closeError(err, detail); serr != nil {
				return serr
			}
			return err
		}
		switch f.Type {
		case "snapshot":
			*failures = 0
		case "error":
			detail = detailError(f.Error)
		case "event":
			if f.Event == nil || f.Seq <= *last {
				continue // already delivered
			}
			*last = f.Seq
			if !yield(*f.Event, nil) {
				conn.Close(websocket.StatusNormalClosure, "")
				return nil
			}
		}
	}
}
