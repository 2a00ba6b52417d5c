package conversation

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
)

// ErrLagged ends a Subscription whose consumer fell more than
// Config.SubscriberBuffer events behind. Nothing was skipped: the consumer
// resumes by subscribing again after Subscription.Last().
var ErrLagged = errors.New("subscriber fell too far behind")

// ErrClosed ends a Subscription after its Close.
var ErrClosed = errors.New("subscription closed")

// live is the in-memory side of a conversation that someone is using: its
// subscribers and its running agent. At most one exists per conversation;
// every append goes through it, under mu, so commit order is delivery order.
type live struct {
	id   string
	refs int // guarded by Service.mu

	mu       sync.Mutex
	loaded   bool
	lastSeq  int64
	state    State
	subs     map[*Subscription]struct{}
	run      *run // non-nil while the agent runs
	deleting bool
}

// run is an agent's run in a conversation.
type run struct {
	cancel  context.CancelFunc
	done    chan struct{}
	pending bool   // a user message arrived that the agent has not seen
	reason  string // why it was cancelled
}

// acquire returns the conversation's live, loaded, with a reference the
// caller must release.
func (s *Service) acquire(ctx context.Context, id string) (*live, error) {
	s.mu.Lock()
	l := s.lives[id]
	if l == nil {
		l = &live{id: id, subs: map[*Subscription]struct{}{}}
		s.lives[id] = l
	}
	l.refs++
	s.mu.Unlock()

	l.mu.Lock()
	var err error
	if !l.loaded {
		// Loaded under l.mu, and every append holds l.mu: lastSeq is exact.
		var c store.Conversation
		if c, err = s.db.ConversationByID(ctx, id); err == nil {
			l.lastSeq, l.state, l.loaded = c.LastSeq, State(c.State), true
		}
	}
	l.mu.Unlock()
	if err != nil {
		s.release(l)
		return nil, err
	}
	return l, nil
}

func (s *Service) release(l *live) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l.refs--
	if l.refs == 0 && s.lives[l.id] == l {
		delete(s.lives, l.id)
	}
}

// appendLocked commits events (and the new state, if not empty) and then
// hands them to every subscriber. The caller holds l.mu.
func (s *Service) appendLocked(ctx context.Context, l *live, state State, evs ...store.Event) ([]store.Event, error) {
	out, err := s.db.AppendEvents(context.WithoutCancel(ctx), l.id, string(state), evs...)
	if err != nil {
		return nil, err
	}
	if len(out) > 0 {
		l.lastSeq = out[len(out)-1].Seq
	}
	if state != "" {
		l.state = state
	}
	for sub := range l.subs {
		for _, e := range out {
			if !sub.offerLocked(e) {
				break
			}
		}
	}
	return out, nil
}

// append is appendLocked taking l.mu.
func (s *Service) append(ctx context.Context, l *live, state State, evs ...store.Event) ([]store.Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return s.appendLocked(ctx, l, state, evs...)
}

// Snapshot is a conversation's state when a subscription began.
type Snapshot struct {
	Conversation store.Conversation
	State        State
	LastSeq      int64 // the last event committed at that moment
}

// Subscription delivers a conversation's events after a sequence number:
// first those already stored, then live ones as they are committed, in seq
// order, each once. Its methods other than Close are for one goroutine.
type Subscription struct {
	s        *Service
	l        *live
	snapshot Snapshot
	ch       chan store.Event
	upTo     int64 // events up to here come from the store
	last     int64 // the last seq delivered
	buf      []store.Event

	// guarded by l.mu
	closed bool
	reason error

	closeOnce sync.Once
}

// offerLocked queues e without blocking. A full queue ends the
// subscription with ErrLagged. The caller holds l.mu.
func (sub *Subscription) offerLocked(e store.Event) bool {
	if sub.closed {
		return false
	}
	select {
	case sub.ch <- e:
		return true
	default:
		sub.endLocked(ErrLagged)
		return false
	}
}

// endLocked closes the subscription's queue with reason; what is queued is
// still delivered. The caller holds l.mu.
func (sub *Subscription) endLocked(reason error) {
	if sub.closed {
		return
	}
	sub.closed, sub.reason = true, reason
	close(sub.ch)
	delete(sub.l.subs, sub)
}

// Snapshot returns the conversation as it was when the subscription began.
func (sub *Subscription) Snapshot() Snapshot { return sub.snapshot }

// Last returns the seq of the last event Next delivered (or the after
// given to Subscribe): the number to resume from.
func (sub *Subscription) Last() int64 { return sub.last }

// Next returns the next event. It blocks until one is committed or ctx is
// done. It ends with an error wrapping ErrLagged (resume after Last()),
// ErrClosed (after Close), errdefs.ErrNotFound (the conversation was
// deleted), errdefs.ErrUnavailable (the server is shutting down), a store
// error, or ctx's error.
func (sub *Subscription) Next(ctx context.Context) (store.Event, error) {
	for {
		if len(sub.buf) > 0 {
			e := sub.buf[0]
			sub.buf = sub.buf[1:]
			if e.Seq <= sub.last {
				continue
			}
			sub.last = e.Seq
			return e, nil
		}
		if sub.last < sub.upTo {
			page, err := sub.s.db.EventRange(ctx, sub.l.id, sub.last, sub.upTo, 500)
			if err != nil {
				return store.Event{}, fmt.Errorf("replay conversation %s: %w", sub.l.id, err)
			}
			if len(page) == 0 {
				// Deleted under us; the queue says why.
				sub.upTo = sub.last
			}
			sub.buf = page
			continue
		}
		select {
		case e, ok := <-sub.ch:
			if !ok {
				sub.l.mu.Lock()
				reason := sub.reason
				sub.l.mu.Unlock()
				if errors.Is(reason, ErrLagged) {
					return store.Event{}, fmt.Errorf("conversation %s: %w; resume after seq %d", sub.l.id, reason, sub.last)
				}
				return store.Event{}, reason
			}
			if e.Seq <= sub.last {
				continue
			}
			sub.last = e.Seq
			return e, nil
		case <-ctx.Done():
			return store.Event{}, ctx.Err()
		}
	}
}

// Close ends the subscription. Idempotent.
func (sub *Subscription) Close() {
	sub.closeOnce.Do(func() {
		sub.l.mu.Lock()
		sub.endLocked(ErrClosed)
		sub.l.mu.Unlock()
		sub.s.release(sub.l)
	})
}

// errDeleted and errShutdown end subscriptions.
func errDeleted(id string) error { return errdefs.NotFound("conversation %s was deleted", id) }

func errShutdown() error {
	return errdefs.New(errdefs.ErrUnavailable, "shutting_down", "server is shutting down")
}
