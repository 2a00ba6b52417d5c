package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/client"
	"github.com/corralhq/corral/internal/testserver"
)

// allEvents lists a conversation's stored events, every page.
func allEvents(t *testing.T, ctx context.Context, c *client.Client, id string) []types.Event {
	t.Helper()
	var out []types.Event
	after := int64(0)
	for {
		page, err := c.ListEvents(ctx, id, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Events...)
		if len(page.Events) == 0 {
			return out
		}
		after = page.NextAfter
	}
}

func stateOf(e types.Event) string {
	if e.Kind != types.KindState {
		return ""
	}
	var p types.StatePayload
	_ = json.Unmarshal(e.Payload, &p)
	return p.State
}

// sameEvents fails unless got is exactly the stored events: each once, in
// order.
func sameEvents(t *testing.T, got, stored []types.Event) {
	t.Helper()
	if len(got) != len(stored) {
		t.Fatalf("got %d events, %d stored", len(got), len(stored))
	}
	for i := range got {
		if got[i].ID != stored[i].ID || got[i].Seq != int64(i+1) {
			t.Fatalf("event %d: got seq %d %s, stored %s", i, got[i].Seq, got[i].ID, stored[i].ID)
		}
	}
}

func TestConversation(t *testing.T) {
	s := testserver.Start(t)
	c := newClient(t, s)
	ctx := testCtx(t)
	s.LLM.Say(testserver.Call("c1", "run_command", map[string]string{"command": "echo hello"}), testserver.Reply("said hello"))
	cv, err := c.CreateConversation(ctx, types.CreateConversationRequest{Workspace: &types.WorkspaceSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Conversation(ctx, cv.ID); err != nil || got.WorkspaceID != cv.WorkspaceID {
		t.Fatalf("get: %+v, %v", got, err)
	}
	n := 0
	for got, err := range c.Conversations(ctx) {
		if err != nil || got.ID != cv.ID {
			t.Fatalf("list: %+v, %v", got, err)
		}
		n++
	}
	if n != 1 {
		t.Fatalf("listed %d conversations", n)
	}
	msg, err := c.Send(ctx, cv.ID, "say hello")
	if err != nil || msg.Kind != types.KindMessage || msg.Seq < 1 {
		t.Fatalf("send: %+v, %v", msg, err)
	}
	var got []types.Event
	for e, err := range c.Events(ctx, cv.ID, 0) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
		if stateOf(e) == types.ConversationWaiting {
			break
		}
	}
	sameEvents(t, got, allEvents(t, ctx, c, cv.ID))
	var sawOutput bool
	for _, e := range got {
		if e.Kind == types.KindObservation {
			var p types.ObservationPayload
			_ = json.Unmarshal(e.Payload, &p)
			sawOutput = p.Output == "hello\n"
		}
	}
	if !sawOutput {
		t.Fatalf("no observation of the command in %d events", len(got))
	}
	// Events after a seq start after it.
	for e, err := range c.Events(ctx, cv.ID, got[len(got)-2].Seq) {
		if err != nil || e.Seq != got[len(got)-1].Seq {
			t.Fatalf("events after: %+v, %v", e, err)
		}
		break
	}
	if _, err := c.Interrupt(ctx, cv.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteConversation(ctx, cv.ID); err != nil {
		t.Fatal(err)
	}
	for _, err := range c.Events(ctx, cv.ID, 0) {
		if !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("events of a deleted conversation: %v", err)
		}
		break
	}
}

// A stream the client stops reading is closed by the server with 4100;
// Events resumes from its last seq and yields every event once, in order.
func TestEventsResumeAfter4100(t *testing.T) {
	s := testserver.StartWith(t, testserver.Options{SubscriberBuffer: 1, SmallSendBuffer: true})
	var reasons []error
	// A small receive buffer too, so the server's writes block after a
	// few KB instead of filling megabytes of socket buffers.
	dialer := &net.Dialer{Control: func(network, address string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	c := newClient(t, s, client.WithHTTPClient(hc), client.WithReconnectHook(func(_ int64, why error) { reasons = append(reasons, why) }))
	ctx := testCtx(t)
	// About 1 MiB of output events, far more than the buffers hold.
	s.LLM.Say(testserver.Call("c1", "run_command", map[string]string{"command": "head -c 3000000 /dev/zero | tr '\\0' a"}), testserver.Reply("done"))
	cv, err := c.CreateConversation(ctx, types.CreateConversationRequest{Workspace: &types.WorkspaceSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, cv.ID, "go"); err != nil {
		t.Fatal(err)
	}
	var got []types.Event
	for e, err := range c.Events(ctx, cv.ID, 0) {
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			// Stop reading until the agent is done: the server's queue
			// for this stream overflows meanwhile.
			waitState(t, ctx, c, cv.ID, types.ConversationWaiting)
		}
		got = append(got, e)
		if stateOf(e) == types.ConversationWaiting {
			break
		}
	}
	sameEvents(t, got, allEvents(t, ctx, c, cv.ID))
	resumed := false
	for _, r := range reasons {
		resumed = resumed || errors.Is(r, client.ErrResume)
	}
	if !resumed {
		t.Fatalf("the stream was never closed with 4100: %v", reasons)
	}
}

func waitState(t *testing.T, ctx context.Context, c *client.Client, id, state string) {
	t.Helper()
	for {
		cv, err := c.Conversation(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if cv.State == state {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("conversation stayed %s", cv.State)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Events keeps going across a restart of the server: it reconnects after
// the shutdown's 1001 close, backing off while the server answers 503.
func TestEventsResumeAcrossRestart(t *testing.T) {
	s := testserver.Start(t)
	var reasons []error
	c := newClient(t, s, client.WithReconnectHook(func(_ int64, why error) { reasons = append(reasons, why) }))
	ctx := testCtx(t)
	s.LLM.Say(testserver.Reply("first answer"))
	cv, err := c.CreateConversation(ctx, types.CreateConversationRequest{Workspace: &types.WorkspaceSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, cv.ID, "one"); err != nil {
		t.Fatal(err)
	}
	var got []types.Event
	waits := 0
	for e, err := range c.Events(ctx, cv.ID, 0) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
		if stateOf(e) != types.ConversationWaiting {
			continue
		}
		waits++
		if waits == 2 {
			break
		}
		s.Restart()
		s.LLM.Say(testserver.Reply("second answer"))
		if _, err := c.Send(ctx, cv.ID, "two"); err != nil {
			t.Fatal(err)
		}
	}
	sameEvents(t, got, allEvents(t, ctx, c, cv.ID))
	if len(reasons) == 0 {
		t.Fatal("the stream never ended across the restart")
	}
}
