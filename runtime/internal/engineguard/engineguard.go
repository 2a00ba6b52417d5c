// Package engineguard bounds the calls container drivers make to their
// engine's HTTP API, so that an engine that stops answering (frozen,
// deadlocked, swapping) fails a call with errdefs.ErrUnavailable within a
// deadline instead of hanging the request that made it.
//
// A call is bounded by liveness, not total time: it fails when the engine
// has given nothing for the deadline while the driver was waiting on it
// (for the response headers, or for the next bytes of a response body the
// driver is reading). A long upload or a steady pull stream runs as long as
// it makes progress; time the driver spends producing a request body or not
// reading a response does not count against the engine.
package engineguard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/errdefs"
)

// Code is the stable error code of a call the engine did not answer.
const Code = "engine_unavailable"

// Error is an engine failure as clients may see it: Error() carries the
// cause (engine URLs, socket paths) for the log, while the *errdefs.Error
// in its chain, which the API shows, names only the engine.
type Error struct {
	public *errdefs.Error
	cause  error
}

// Unavailable returns an errdefs.ErrUnavailable coded Code for an engine
// (e.g. "docker") that could not be reached or did not answer; cause stays
// in the chain for logs and errors.Is.
func Unavailable(engine string, cause error) error {
	var e *Error
	if errors.As(cause, &e) {
		return cause
	}
	return &Error{
		public: &errdefs.Error{Class: errdefs.ErrUnavailable, Code: Code,
			Message: fmt.Sprintf("the %s engine is not answering; try again later", engine)},
		cause: cause,
	}
}

func (e *Error) Error() string   { return e.public.Message + ": " + e.cause.Error() }
func (e *Error) Unwrap() []error { return []error{e.public, e.cause} }

// errStalled is the cause of a request cancelled by its watchdog.
var errStalled = errors.New("no answer from the engine within the deadline")

// Transport wraps base so that every request fails with Unavailable(engine)
// when the engine gives nothing for timeout while the caller waits on it.
// A timeout <= 0 returns base unchanged.
func Transport(base http.RoundTripper, engine string, timeout time.Duration) http.RoundTripper {
	if timeout <= 0 {
		return base
	}
	return &transport{base: base, engine: engine, timeout: timeout}
}

type transport struct {
	base    http.RoundTripper
	engine  string
	timeout time.Duration
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	w := newWatchdog(t.timeout, func() { cancel(errStalled) })
	out := req.Clone(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		out.Body = &requestBody{ReadCloser: req.Body, w: w}
	}
	w.arm()
	resp, err := t.base.RoundTrip(out)
	w.responded()
	if err != nil {
		stalled := context.Cause(ctx) == errStalled
		cancel(nil)
		if stalled {
			return nil, Unavailable(t.engine, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, errStalled))
		}
		return nil, err
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		// Nothing to read, and nothing a caller must close: release now.
		cancel(nil)
		return resp, nil
	}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		// An upgraded stream: its liveness is its user's business.
		resp.Body = &upgradedBody{ReadWriteCloser: rwc, cancel: cancel}
		return resp, nil
	}
	resp.Body = &responseBody{ReadCloser: resp.Body, w: w, ctx: ctx, cancel: cancel, engine: t.engine}
	return resp, nil
}

// watchdog calls fire when armed for longer than d.
type watchdog struct {
	mu       sync.Mutex
	t        *time.Timer
	d        time.Duration
	answered bool // the request phase is over: requestBody no longer arms
}

func newWatchdog(d time.Duration, fire func()) *watchdog {
	w := &watchdog{d: d, t: time.AfterFunc(time.Hour, fire)}
	w.t.Stop()
	return w
}

func (w *watchdog) arm() {
	w.mu.Lock()
	w.t.Reset(w.d)
	w.mu.Unlock()
}

func (w *watchdog) disarm() {
	w.mu.Lock()
	w.t.Stop()
	w.mu.Unlock()
}

func (w *watchdog) responded() {
	w.mu.Lock()
	w.answered = true
	w.t.Stop()
	w.mu.Unlock()
}

// armRequest re-arms after a request body read, unless the engine has
// answered already.
func (w *watchdog) armRequest() {
	w.mu.Lock()
	if !w.answered {
		w.t.Reset(w.d)
	}
	w.mu.Unlock()
}

// requestBody pauses the watchdog while the driver produces the body: a
// slow source is not a slow engine.
type requestBody struct {
	io.ReadCloser
	w *watchdog
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.w.disarm()
	n, err := b.ReadCloser.Read(p)
	b.w.armRequest()
	return n, err
}

// responseBody arms the watchdog while the driver waits for bytes.
// Its Close releases the request's context: callers close response bodies,
// as net/http requires of them.
type responseBody struct {
	io.ReadCloser
	w      *watchdog
	ctx    context.Context
	cancel context.CancelCauseFunc
	engine string
}

func (b *responseBody) Read(p []byte) (int, error) {
	b.w.arm()
	n, err := b.ReadCloser.Read(p)
	b.w.disarm()
	if err != nil && err != io.EOF && context.Cause(b.ctx) == errStalled {
		err = Unavailable(b.engine, fmt.Errorf("read response: %w", errStalled))
	}
	if err == io.EOF {
		// Read to the end (the connection is back in the pool): release
		// the context now, even if the caller forgets to close.
		b.cancel(nil)
	}
	return n, err
}

func (b *responseBody) Close() error {
	b.w.disarm()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

type upgradedBody struct {
	io.ReadWriteCloser
	cancel context.CancelCauseFunc
}

func (b *upgradedBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.cancel(nil)
	return err
}

// Call runs f, which talks to the engine over a channel Transport cannot
// watch (a hijacked stream's handshake), and fails with Unavailable(engine)
// if it has not returned within timeout. f keeps running in the background
// then; if it succeeds late, undo (if not nil) is called with its result
// so that nothing it made is left behind.
func Call[T any](ctx context.Context, engine string, timeout time.Duration, f func(context.Context) (T, error), undo func(T)) (T, error) {
	if timeout <= 0 {
		return f(ctx)
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	fctx, cancel := context.WithCancel(ctx)
	go func() {
		v, err := f(fctx)
		ch <- result{v, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		cancel()
		return r.v, r.err
	case <-t.C:
		go func() {
			defer cancel()
			if r := <-ch; r.err == nil && undo != nil {
				undo(r.v)
			}
		}()
		var zero T
		return zero, Unavailable(engine, errStalled)
	}
}

// Retry calls f until it succeeds, backing off from one second to a
// minute, for at most limit; it is for clean-up that must happen once the
// engine answers again (killing a command whose stream an outage cut).
// It returns f's last error, nil on success. Run it in a goroutine.
func Retry(log hclog.Logger, what string, limit time.Duration, f func(context.Context) error) error {
	deadline := time.Now().Add(limit)
	delay := time.Second
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := f(ctx)
		cancel()
		if err == nil {
			log.Info(what + ": done after the engine came back")
			return nil
		}
		if time.Now().Add(delay).After(deadline) {
			log.Error(what+": gave up", "error", err)
			return err
		}
		log.Debug(what+": engine still failing; retrying", "error", err, "in", delay)
		time.Sleep(delay)
		delay = min(2*delay, time.Minute)
	}
}
