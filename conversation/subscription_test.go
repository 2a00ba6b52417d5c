package conversation_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/conversation/openai"
	"github.com/corralhq/corral/store"
)

// busyScript makes the agent run n commands, each printing a line, then
// finish: about 3n+5 events.
func busyScript(n int) []reply {
	var script []reply
	for i := range n {
		script = append(script, reply{calls: []openai.ToolCall{call(fmt.Sprintf("c%d", i), "run_command",
			map[string]string{"command": fmt.Sprintf("echo line %d", i)})}})
	}
	return append(script, reply{calls: []openai.ToolCall{call("end", "finish", map[string]string{"summary": "all done"})}})
}

// collect reads a subscription until the finished state, reconnecting from
// Last() every `every` events (0: never) and whenever it is dropped for
// lagging. It returns every event delivered, in order.
func collect(ctx context.Context, svc *conversation.Service, userID, id string, after int64, every int) ([]store.Event, int, error) {
	sub, err := svc.Subscribe(ctx, userID, id, after)
	if err != nil {
		return nil, 0, err
	}
	var got []store.Event
	reconnects := 0
	for {
		e, err := sub.Next(ctx)
		if errors.Is(err, conversation.ErrLagged) {
			last := sub.Last()
			sub.Close()
			reconnects++
			if sub, err = svc.Subscribe(ctx, userID, id, last); err != nil {
				return got, reconnects, err
			}
			continue
		}
		if err != nil {
			sub.Close()
			return got, reconnects, err
		}
		got = append(got, e)
		if e.Kind == conversation.KindState && string(e.Payload) == `{"state":"finished"}` {
			sub.Close()
			return got, reconnects, nil
		}
		if every > 0 && len(got)%every == 0 {
			last := sub.Last()
			sub.Close() // a client that drops mid-stream and comes back
			reconnects++
			if sub, err = svc.Subscribe(ctx, userID, id, last); err != nil {
				return got, reconnects, err
			}
		}
	}
}

// sameAsStored checks that got is exactly the stored events after `after`.
func sameAsStored(t *testing.T, f *fixture, id string, after int64, got []store.Event) {
	t.Helper()
	stored, err := f.db.ListEvents(context.Background(), id, after, store.MaxPageSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(stored) {
		t.Fatalf("got %d events, %d stored after %d", len(got), len(stored), after)
	}
	for i := range stored {
		if got[i].ID != stored[i].ID || got[i].Seq != stored[i].Seq || string(got[i].Payload) != string(stored[i].Payload) {
			t.Fatalf("event %d: got seq %d %s, stored seq %d %s", i, got[i].Seq, got[i].ID, stored[i].Seq, stored[i].ID)
		}
	}
}

func TestManySubscribersWithDisconnectsSeeEveryEventOnce(t *testing.T) {
	llm := newLLM(t, busyScript(25)...)
	cfg := testConfig(llm.URL())
	cfg.MaxSteps = 100
	f := newFixture(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := f.create(conversation.LLMConfig{})

	const subscribers = 40
	results := make([][]store.Event, subscribers)
	reconnects := make([]int, subscribers)
	errs := make([]error, subscribers)
	var wg sync.WaitGroup
	for i := range subscribers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			every := 0
			if i%2 == 1 {
				every = i%7 + 1 // half of them drop and come back every few events
			}
			results[i], reconnects[i], errs[i] = collect(ctx, f.svc, f.alice.ID, c.ID, 0, every)
		}()
	}
	if _, err := f.svc.Send(ctx, f.alice.ID, c.ID, "print 25 lines"); err != nil {
		t.Fatal(err)
	}
	// A late subscriber starting mid-run replays what it missed.
	var late []store.Event
	var lateErr error
	var lateAfter int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			cv, err := f.svc.Get(ctx, f.alice.ID, c.ID)
			if err != nil {
				lateErr = err
				return
			}
			if cv.LastSeq >= 20 {
				lateAfter = 7
				late, _, lateErr = collect(ctx, f.svc, f.alice.ID, c.ID, lateAfter, 0)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	wg.Wait()
	total := 0
	for i := range subscribers {
		if errs[i] != nil {
			t.Fatalf("subscriber %d: %v", i, errs[i])
		}
		sameAsStored(t, f, c.ID, 0, results[i])
		total += reconnects[i]
	}
	if lateErr != nil {
		t.Fatal(lateErr)
	}
	sameAsStored(t, f, c.ID, lateAfter, late)
	if total == 0 {
		t.Fatal("no subscriber reconnected")
	}
	t.Logf("%d events to %d subscribers, %d reconnects", len(results[0]), subscribers, total)
}

func TestSlowSubscriberIsDroppedWithoutSlowingOthers(t *testing.T) {
	llm := newLLM(t, busyScript(10)...)
	cfg := testConfig(llm.URL())
	cfg.SubscriberBuffer = 4
	f := newFixture(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := f.create(conversation.LLMConfig{})

	slow, err := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	var fast []store.Event
	var fastErr error
	var reconnects int
	done := make(chan struct{})
	go func() {
		defer close(done)
		fast, reconnects, fastErr = collect(ctx, f.svc, f.alice.ID, c.ID, 0, 0)
	}()
	f.svc.Send(ctx, f.alice.ID, c.ID, "go")
	<-done // the agent finished although slow never read
	if fastErr != nil {
		t.Fatal(fastErr)
	}
	sameAsStored(t, f, c.ID, 0, fast)
	if reconnects != 0 {
		t.Logf("the fast subscriber lagged %d times", reconnects)
	}

	// The slow one gets what was queued for it, then is told to resume.
	var got []store.Event
	for {
		e, err := slow.Next(ctx)
		if err != nil {
			if !errors.Is(err, conversation.ErrLagged) {
				t.Fatalf("slow subscriber ended with %v", err)
			}
			break
		}
		got = append(got, e)
	}
	if len(got) != 4 || slow.Last() != 4 {
		t.Fatalf("slow subscriber got %d events before being dropped, last %d", len(got), slow.Last())
	}
	rest, _, err := collect(ctx, f.svc, f.alice.ID, c.ID, slow.Last(), 0)
	if err != nil {
		t.Fatal(err)
	}
	sameAsStored(t, f, c.ID, 0, append(got, rest...))
}
