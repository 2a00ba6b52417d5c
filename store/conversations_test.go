package store

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/corralhq/corral/errdefs"
)

// conversationFixture opens a real database file with one user and one
// workspace.
func conversationFixture(t *testing.T) (*DB, User, Workspace) {
	t.Helper()
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "corral.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	u, err := db.CreateUser(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	w := Workspace{ID: NewID("ws"), UserID: u.ID, Runtime: "process", State: "running"}
	if err := db.CreateWorkspace(ctx, w); err != nil {
		t.Fatal(err)
	}
	return db, u, w
}

func TestConversationCRUDAndIsolation(t *testing.T) {
	ctx := context.Background()
	db, alice, ws := conversationFixture(t)
	bob, err := db.CreateUser(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 3 {
		c, err := db.CreateConversation(ctx, Conversation{ID: NewID("cv"), UserID: alice.ID, WorkspaceID: ws.ID,
			State: "idle", LLMModel: "m", LLMKey: []byte{1, 2, 3}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID)
	}
	got, err := db.GetConversation(ctx, alice.ID, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if got.WorkspaceID != ws.ID || got.LLMModel != "m" || string(got.LLMKey) != "\x01\x02\x03" || got.State != "idle" {
		t.Fatalf("got %+v", got)
	}
	if _, err := db.GetConversation(ctx, bob.ID, ids[0]); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("bob reads alice's conversation: %v", err)
	}
	if err := db.DeleteConversation(ctx, bob.ID, ids[0]); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("bob deletes alice's conversation: %v", err)
	}
	if _, err := db.CreateConversation(ctx, Conversation{ID: NewID("cv"), UserID: alice.ID, WorkspaceID: "ws_missing", State: "idle"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("conversation on a missing workspace: %v", err)
	}

	page1, err := db.ListConversations(ctx, alice.ID, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	page2, err := db.ListConversations(ctx, alice.ID, page1[len(page1)-1].ID, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(page1) != 2 || len(page2) != 1 || page1[0].ID != ids[0] || page1[1].ID != ids[1] || page2[0].ID != ids[2] {
		t.Fatalf("pages %v %v, want %v", page1, page2, ids)
	}
	if none, err := db.ListConversations(ctx, bob.ID, "", 0); err != nil || len(none) != 0 {
		t.Fatalf("bob lists %v, %v", none, err)
	}

	if _, err := db.AppendEvents(ctx, ids[0], "", Event{Kind: "message", Source: "user"}); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteConversation(ctx, alice.ID, ids[0]); err != nil {
		t.Fatal(err)
	}
	if evs, err := db.ListEvents(ctx, ids[0], 0, 0); err != nil || len(evs) != 0 {
		t.Fatalf("events survive their conversation: %v, %v", evs, err)
	}
	// Deleting the workspace takes its conversations along.
	if err := db.DeleteWorkspace(ctx, ws.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GetConversation(ctx, alice.ID, ids[1]); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("conversation outlives its workspace: %v", err)
	}
}

func TestAppendEventsConcurrentSeqHasNoGaps(t *testing.T) {
	ctx := context.Background()
	db, alice, ws := conversationFixture(t)
	c, err := db.CreateConversation(ctx, Conversation{ID: NewID("cv"), UserID: alice.ID, WorkspaceID: ws.ID, State: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				p, _ := json.Marshal(map[string]int{"writer": w, "i": i})
				if _, err := db.AppendEvents(ctx, c.ID, "", Event{Kind: "output", Source: "workspace", Payload: p}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var all []Event
	for after := int64(0); ; {
		page, err := db.ListEvents(ctx, c.ID, after, 37)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].Seq
	}
	if len(all) != writers*each {
		t.Fatalf("%d events, want %d", len(all), writers*each)
	}
	for i, e := range all {
		if e.Seq != int64(i+1) || e.ConversationID != c.ID || e.ID == "" || e.Time.IsZero() {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	got, err := db.GetConversation(ctx, alice.ID, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.LastSeq != writers*each {
		t.Fatalf("last_seq %d", got.LastSeq)
	}
	if n, err := db.ConversationsOfWorkspace(ctx, ws.ID); err != nil || len(n) != 1 || n[0].ID != c.ID {
		t.Fatalf("conversations of the workspace: %v, %v", n, err)
	}
	rng, err := db.EventRange(ctx, c.ID, 10, 15, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rng) != 5 || rng[0].Seq != 11 || rng[4].Seq != 15 {
		t.Fatalf("range %v", rng)
	}
	if _, err := db.AppendEvents(ctx, c.ID, "", Event{Kind: "message", Source: "user"}); err != nil {
		t.Fatal(err)
	}
	msgs, err := db.ListEventsExcept(ctx, c.ID, 0, 0, "output")
	if err != nil || len(msgs) != 1 || msgs[0].Seq != writers*each+1 || msgs[0].Kind != "message" {
		t.Fatalf("events except output: %v, %v", msgs, err)
	}
}

func TestAppendEventsStateAndAppendOnly(t *testing.T) {
	ctx := context.Background()
	db, alice, ws := conversationFixture(t)
	c, err := db.CreateConversation(ctx, Conversation{ID: NewID("cv"), UserID: alice.ID, WorkspaceID: ws.ID, State: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := db.AppendEvents(ctx, c.ID, "running",
		Event{Kind: "message", Source: "user", Payload: json.RawMessage(`{"content":"hi"}`)},
		Event{Kind: "state", Source: "system", Payload: json.RawMessage(`{"state":"running"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].Seq != 1 || evs[1].Seq != 2 {
		t.Fatalf("seqs %d %d", evs[0].Seq, evs[1].Seq)
	}
	running, err := db.ConversationsInState(ctx, "running", "waiting")
	if err != nil {
		t.Fatal(err)
	}
	if len(running) != 1 || running[0].ID != c.ID || running[0].LastSeq != 2 {
		t.Fatalf("running %+v", running)
	}
	if _, err := db.AppendEvents(ctx, c.ID, "", Event{Kind: "message", Source: "user", Payload: json.RawMessage(`{`)}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad payload: %v", err)
	}
	if _, err := db.AppendEvents(ctx, "cv_missing", "", Event{Kind: "message", Source: "user"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing conversation: %v", err)
	}
	if _, err := db.sql.ExecContext(ctx, "UPDATE conversation_events SET payload = '{}' WHERE seq = 1"); err == nil {
		t.Fatal("an event was changed")
	}
	// The UNIQUE(conversation_id, seq) constraint holds even against a
	// writer that bypasses AppendEvents.
	_, err = db.sql.ExecContext(ctx, `INSERT INTO conversation_events (id, conversation_id, seq, at, source, kind, payload)
		VALUES ('ev_dup', ?, 2, 0, 'user', 'message', '{}')`, c.ID)
	if !errors.Is(classify(err), errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate seq: %v", err)
	}
}
