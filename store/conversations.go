package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// Conversation is the store's record of a conversation with an agent. State
// is the conversation package's vocabulary; the store keeps it as given.
type Conversation struct {
	ID, UserID, WorkspaceID, State string
	// LLMBaseURL and LLMModel override the server's defaults when not empty.
	LLMBaseURL, LLMModel string
	// LLMKey is the conversation's own API key, sealed by the caller; the
	// store never sees it in the clear.
	LLMKey []byte
	// LastSeq is the sequence number of the conversation's last event (0:
	// none yet).
	LastSeq              int64
	CreatedAt, UpdatedAt time.Time
}

// Event is one entry of a conversation's append-only log. Seq numbers run
// 1, 2, 3… per conversation, without gaps.
type Event struct {
	ID             string          `json:"id"`
	ConversationID string          `json:"conversation_id"`
	Seq            int64           `json:"seq"`
	Time           time.Time       `json:"time"`
	Source         string          `json:"source"`
	Kind           string          `json:"kind"`
	Payload        json.RawMessage `json:"payload"`
}

const conversationColumns = "id, user_id, workspace_id, state, llm_base_url, llm_model, llm_key, last_seq, created_at, updated_at FROM conversations"

func scanConversation(r rowScanner) (Conversation, error) {
	var c Conversation
	var created, updated int64
	if err := r.Scan(&c.ID, &c.UserID, &c.WorkspaceID, &c.State, &c.LLMBaseURL, &c.LLMModel,
		&c.LLMKey, &c.LastSeq, &created, &updated); err != nil {
		return Conversation{}, err
	}
	c.CreatedAt, c.UpdatedAt = fromMS(created), fromMS(updated)
	return c, nil
}

// CreateConversation stores a new conversation with no events. ID, UserID,
// WorkspaceID and State are required; a zero CreatedAt becomes now.
//
// Errors: ErrInvalidArgument for a missing field; ErrAlreadyExists if the ID
// is taken; ErrNotFound if the user or workspace does not exist. Not
// idempotent.
func (db *DB) CreateConversation(ctx context.Context, c Conversation) (Conversation, error) {
	switch {
	case c.ID == "" || c.UserID == "" || c.WorkspaceID == "" || c.State == "":
		return Conversation{}, errdefs.Invalid("invalid_conversation", "create conversation %q: id, user, workspace and state are required", c.ID)
	}
	if c.CreatedAt.IsZero() {
		c.CreatedAt = db.nowTime()
	}
	c.UpdatedAt, c.LastSeq = c.CreatedAt, 0
	_, err := db.sql.ExecContext(ctx,
		`INSERT INTO conversations (id, user_id, workspace_id, state, llm_base_url, llm_model, llm_key, last_seq, created_at, updated_at)
		 VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)`,
		c.ID, c.UserID, c.WorkspaceID, c.State, c.LLMBaseURL, c.LLMModel, nilIfEmpty(c.LLMKey),
		toMS(c.CreatedAt), toMS(c.UpdatedAt))
	if err != nil {
		err = classify(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return Conversation{}, fmt.Errorf("create conversation %s: user %s or workspace %s: %w", c.ID, c.UserID, c.WorkspaceID, err)
		}
		return Conversation{}, fmt.Errorf("create conversation %s: %w", c.ID, err)
	}
	return c, nil
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// GetConversation returns the conversation if userID owns it. Errors:
// ErrNotFound if it does not exist or belongs to someone else — the two are
// indistinguishable.
func (db *DB) GetConversation(ctx context.Context, userID, id string) (Conversation, error) {
	c, err := scanConversation(db.sql.QueryRowContext(ctx,
		"SELECT "+conversationColumns+" WHERE id = ? AND user_id = ?", id, userID))
	if errors.Is(err, sql.ErrNoRows) {
		return Conversation{}, errdefs.NotFound("conversation %s not found", id)
	}
	if err != nil {
		return Conversation{}, fmt.Errorf("get conversation %s: %w", id, classify(err))
	}
	return c, nil
}

// ConversationByID returns the conversation whoever owns it, for the
// server's own use; never answer a user with it without an ownership check.
// Errors: ErrNotFound.
func (db *DB) ConversationByID(ctx context.Context, id string) (Conversation, error) {
	c, err := scanConversation(db.sql.QueryRowContext(ctx,
		"SELECT "+conversationColumns+" WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Conversation{}, errdefs.NotFound("conversation %s not found", id)
	}
	if err != nil {
		return Conversation{}, fmt.Errorf("get conversation %s: %w", id, classify(err))
	}
	return c, nil
}

// ListConversations returns a page of the user's conversations with an ID
// greater than after ("" for the first page), in ID (creation) order, at most
// limit of them (<= 0: DefaultPageSize; clamped to MaxPageSize).
func (db *DB) ListConversations(ctx context.Context, userID, after string, limit int) ([]Conversation, error) {
	return db.listConversations(ctx,
		"SELECT "+conversationColumns+" WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?",
		userID, after, clampLimit(limit))
}

// ConversationsInState returns every conversation, of any user, whose state
// is one of states, in ID order: the server uses it at start-up to find
// conversations a previous run left running.
func (db *DB) ConversationsInState(ctx context.Context, states ...string) ([]Conversation, error) {
	if len(states) == 0 {
		return []Conversation{}, nil
	}
	args := make([]any, len(states))
	for i, s := range states {
		args[i] = s
	}
	q := "SELECT " + conversationColumns + " WHERE state IN (?" + strings.Repeat(", ?", len(states)-1) + ") ORDER BY id"
	return db.listConversations(ctx, q, args...)
}

// ConversationsOfWorkspace returns every conversation held in the
// workspace, in ID order.
func (db *DB) ConversationsOfWorkspace(ctx context.Context, workspaceID string) ([]Conversation, error) {
	return db.listConversations(ctx, "SELECT "+conversationColumns+" WHERE workspace_id = ? ORDER BY id", workspaceID)
}

func (db *DB) listConversations(ctx context.Context, q string, args ...any) ([]Conversation, error) {
	rows, err := db.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list conversations: %w", classify(err))
	}
	defer rows.Close()
	cs := []Conversation{}
	for rows.Next() {
		c, err := scanConversation(rows)
		if err != nil {
			return nil, fmt.Errorf("list conversations: %w", classify(err))
		}
		cs = append(cs, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list conversations: %w", classify(err))
	}
	return cs, nil
}

// DeleteConversation deletes the user's conversation and its events.
// Errors: ErrNotFound if it does not exist or belongs to someone else.
func (db *DB) DeleteConversation(ctx context.Context, userID, id string) error {
	res, err := db.sql.ExecContext(ctx, "DELETE FROM conversations WHERE id = ? AND user_id = ?", id, userID)
	if err := affectedOne(res, err, "delete conversation %s", id); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return errdefs.NotFound("conversation %s not found", id)
		}
		return err
	}
	return nil
}

// AppendEvents appends events to the conversation's log in one transaction:
// each gets the next sequence number, a new ID and (if zero) the current
// time, and the returned copies carry them. If state is not empty the
// conversation's state is set to it in the same transaction, so a state
// event and the state it names are committed together. When AppendEvents
// returns nil the events are durable (WAL, synchronous=NORMAL: durable
// across a process crash; an OS crash may lose the last commits, never
// reorder them).
//
// Kind and Source are required and Payload must be valid JSON (empty means
// {}). Errors: ErrInvalidArgument; ErrNotFound if the conversation does not
// exist. Not idempotent.
func (db *DB) AppendEvents(ctx context.Context, conversationID, state string, events ...Event) ([]Event, error) {
	if len(events) == 0 && state == "" {
		return nil, nil
	}
	out := make([]Event, len(events))
	now := db.nowTime()
	for i, e := range events {
		if e.Kind == "" || e.Source == "" {
			return nil, errdefs.Invalid("invalid_event", "append to conversation %s: event kind and source are required", conversationID)
		}
		if len(e.Payload) == 0 {
			e.Payload = json.RawMessage("{}")
		} else if !json.Valid(e.Payload) {
			return nil, errdefs.Invalid("invalid_event", "append to conversation %s: payload is not valid JSON", conversationID)
		}
		if e.Time.IsZero() {
			e.Time = now
		} else {
			e.Time = fromMS(toMS(e.Time))
		}
		e.ConversationID = conversationID
		e.ID = NewID("ev")
		out[i] = e
	}
	err := db.tx(ctx, func(tx *sql.Tx) error {
		var last int64
		err := tx.QueryRowContext(ctx,
			`UPDATE conversations SET last_seq = last_seq + ?, updated_at = ?,
			        state = CASE WHEN ? = '' THEN state ELSE ? END
			 WHERE id = ? RETURNING last_seq`,
			len(out), toMS(now), state, state, conversationID).Scan(&last)
		if errors.Is(err, sql.ErrNoRows) {
			return errdefs.NotFound("conversation %s not found", conversationID)
		}
		if err != nil {
			return err
		}
		if len(out) == 0 {
			return nil
		}
		stmt, err := tx.PrepareContext(ctx,
			`INSERT INTO conversation_events (id, conversation_id, seq, at, source, kind, payload) VALUES (?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		first := last - int64(len(out)) + 1
		for i := range out {
			out[i].Seq = first + int64(i)
			e := out[i]
			if _, err := stmt.ExecContext(ctx, e.ID, conversationID, e.Seq, toMS(e.Time), e.Source, e.Kind, string(e.Payload)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("append to conversation %s: %w", conversationID, err)
	}
	return out, nil
}

// ListEvents returns the conversation's events with seq > after, in seq
// order, at most limit of them (<= 0: DefaultPageSize; clamped to
// MaxPageSize). An unknown conversation yields an empty list: callers check
// ownership first with GetConversation.
func (db *DB) ListEvents(ctx context.Context, conversationID string, after int64, limit int) ([]Event, error) {
	return db.listEvents(ctx, conversationID, after, -1, clampLimit(limit))
}

// EventRange returns the conversation's events with after < seq <= upTo, in
// seq order, at most limit of them (<= 0: DefaultPageSize; clamped to
// MaxPageSize).
func (db *DB) EventRange(ctx context.Context, conversationID string, after, upTo int64, limit int) ([]Event, error) {
	return db.listEvents(ctx, conversationID, after, upTo, clampLimit(limit))
}

// ListEventsExcept is ListEvents without the events of the given kind (the
// agent's history leaves out streamed output, which can be large).
func (db *DB) ListEventsExcept(ctx context.Context, conversationID string, after int64, limit int, kind string) ([]Event, error) {
	return db.listEvents(ctx, conversationID, after, -1, clampLimit(limit), kind)
}

func (db *DB) listEvents(ctx context.Context, conversationID string, after, upTo int64, limit int, exceptKinds ...string) ([]Event, error) {
	q := `SELECT id, seq, at, source, kind, payload FROM conversation_events
	      WHERE conversation_id = ? AND seq > ?`
	args := []any{conversationID, after}
	if upTo >= 0 {
		q += " AND seq <= ?"
		args = append(args, upTo)
	}
	for _, k := range exceptKinds {
		q += " AND kind != ?"
		args = append(args, k)
	}
	q += " ORDER BY seq LIMIT ?"
	args = append(args, limit)
	rows, err := db.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list events of conversation %s: %w", conversationID, classify(err))
	}
	defer rows.Close()
	evs := []Event{}
	for rows.Next() {
		e := Event{ConversationID: conversationID}
		var at int64
		var payload string
		if err := rows.Scan(&e.ID, &e.Seq, &at, &e.Source, &e.Kind, &payload); err != nil {
			return nil, fmt.Errorf("list events of conversation %s: %w", conversationID, classify(err))
		}
		e.Time, e.Payload = fromMS(at), json.RawMessage(payload)
		evs = append(evs, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list events of conversation %s: %w", conversationID, classify(err))
	}
	return evs, nil
}
