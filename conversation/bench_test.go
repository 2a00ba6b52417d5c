package conversation

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/store"
)

// benchConversation opens a real database file with one conversation and a
// Service over it.
func benchConversation(b *testing.B) (*Service, store.Conversation) {
	b.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(b.TempDir(), "corral.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	u, err := db.CreateUser(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	w := store.Workspace{ID: store.NewID("ws"), UserID: u.ID, Runtime: "bench", State: "running"}
	if err := db.CreateWorkspace(ctx, w); err != nil {
		b.Fatal(err)
	}
	s, err := New(db, nil, Config{Logger: hclog.NewNullLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(ctx) })
	c, err := s.Create(ctx, u.ID, CreateParams{WorkspaceID: w.ID})
	if err != nil {
		b.Fatal(err)
	}
	return s, c
}

// outputEvent is a typical streamed chunk of command output.
func outputEvent(i int) store.Event {
	return event(SourceWorkspace, KindOutput, OutputPayload{CallID: "call_bench", Stream: "stdout",
		Data: fmt.Sprintf("line %d: the quick brown fox jumps over the lazy dog\n", i)})
}

// BenchmarkEventFanout measures how fast events are committed and delivered:
// "baseline" appends them to SQLite through the same path with nobody
// listening; "subscribers_100" does the same while 100 subscribers each
// receive every event (resubscribing from their last seq, as clients do,
// if they fall behind). Compare events/s of the two for the cost of
// fan-out; delivery_p50_us and delivery_p99_us are the delay from the start
// of an append (so including its commit, commit_us in the baseline) to
// a subscriber receiving it.
func BenchmarkEventFanout(b *testing.B) {
	b.Run("baseline", func(b *testing.B) {
		s, c := benchConversation(b)
		ctx := context.Background()
		l, err := s.acquire(ctx, c.ID)
		if err != nil {
			b.Fatal(err)
		}
		defer s.release(l)
		b.ResetTimer()
		start := time.Now()
		for i := range b.N {
			if _, err := s.append(ctx, l, "", outputEvent(i)); err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N), "commit_us")
	})
	b.Run("subscribers_100", func(b *testing.B) {
		const subscribers = 100
		s, c := benchConversation(b)
		ctx := context.Background()
		l, err := s.acquire(ctx, c.ID)
		if err != nil {
			b.Fatal(err)
		}
		defer s.release(l)
		u := c.UserID
		sent := make([]atomic.Int64, b.N+1) // by seq: when its append began
		delays := make([][]time.Duration, subscribers)
		var lagged atomic.Int64
		var ready, done sync.WaitGroup
		errs := make(chan error, subscribers)
		for i := range subscribers {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				sub, err := s.Subscribe(ctx, u, c.ID, 0)
				ready.Done()
				if err != nil {
					errs <- err
					return
				}
				ds := make([]time.Duration, 0, b.N)
				for len(ds) < b.N {
					e, err := sub.Next(ctx)
					if errors.Is(err, ErrLagged) {
						lagged.Add(1)
						last := sub.Last()
						sub.Close()
						if sub, err = s.Subscribe(ctx, u, c.ID, last); err != nil {
							errs <- err
							return
						}
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					ds = append(ds, time.Duration(time.Now().UnixNano()-sent[e.Seq].Load()))
				}
				sub.Close()
				delays[i] = ds
			}()
		}
		ready.Wait()
		b.ResetTimer()
		start := time.Now()
		for i := range b.N {
			sent[i+1].Store(time.Now().UnixNano())
			if _, err := s.append(ctx, l, "", outputEvent(i)); err != nil {
				b.Fatal(err)
			}
		}
		appended := time.Since(start)
		done.Wait()
		delivered := time.Since(start)
		b.StopTimer()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		var all []time.Duration
		for _, ds := range delays {
			all = append(all, ds...)
		}
		slices.Sort(all)
		b.ReportMetric(float64(b.N)/appended.Seconds(), "events/s")
		b.ReportMetric(float64(b.N*subscribers)/delivered.Seconds(), "deliveries/s")
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "delivery_p50_us")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "delivery_p99_us")
		b.ReportMetric(float64(lagged.Load()), "resubscribes")
	})
}
