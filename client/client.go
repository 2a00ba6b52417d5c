package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/corralhq/corral/api/types"
)

// Client is a connection to one Corral server with one API key. It is safe
// for concurrent use.
type Client struct {
	base  *url.URL
	key   string
	http  *http.Client
	retry Retry
	agent string
	// onReconnect is told why a conversation stream ended.
	onReconnect func(after int64, why error)
}

// Retry says how calls are retried. A call is retried when its outcome is
// known to be "not done": a 429 or 503 answer, which the server gives
// before doing anything, or any failure of an idempotent call (GET, PUT,
// DELETE) whose body can be sent again: a network error, 502, 503, 504.
// A call that may have changed something and whose outcome is unknown (a
// POST cut off mid-way) is never retried. Waits grow exponentially from
// Base to Max with full jitter; a Retry-After answer is honoured as given.
type Retry struct {
	// Attempts is the most tries of one call, the first included; 1 turns
	// retries off. Default 4.
	Attempts int
	Base     time.Duration // default 200ms
	Max      time.Duration // default 5s
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sends the requests through hc (its Timeout should be 0:
// streams last; use contexts to bound calls).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.http = hc } }

// WithRetry replaces the retry policy; zero fields take the defaults.
func WithRetry(r Retry) Option { return func(c *Client) { c.retry = r } }

// WithReconnectHook makes Events call f each time its stream ends, with
// the last seq delivered and why (ErrResume, an *Error, a network error);
// Events then reconnects unless the error is final. For showing
// "reconnecting..." to a person.
func WithReconnectHook(f func(after int64, why error)) Option {
	return func(c *Client) { c.onReconnect = f }
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(c *Client) { c.agent = ua } }

// New returns a client of the server at baseURL ("https://corral.example"),
// authenticating with key. It does not contact the server.
func New(baseURL, key string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("corral: server URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("corral: server URL %q must be http(s)://host[:port]", baseURL)
	}
	c := &Client{base: u, key: key, http: http.DefaultClient, agent: "corral-go"}
	for _, o := range opts {
		o(c)
	}
	if c.retry.Attempts <= 0 {
		c.retry.Attempts = 4
	}
	if c.retry.Base <= 0 {
		c.retry.Base = 200 * time.Millisecond
	}
	if c.retry.Max <= 0 {
		c.retry.Max = 5 * time.Second
	}
	return c, nil
}

// URL returns the server's base URL.
func (c *Client) URL() string { return c.base.String() }

// request is one API call.
type request struct {
	method string
	path   string // escaped, from the server root
	query  url.Values
	json   any       // a JSON body, or
	body   io.Reader // a raw body (replayed on retry only if it is an io.ReadSeeker)
	size   int64     // of body, -1 if unknown
	ctype  string
	accept string
	// idempotent calls are retried after any transient failure; others
	// only after answers that say nothing was done (429, 503).
	idempotent bool
}

// do sends req, retrying as Retry says, and returns a 2xx response whose
// body the caller closes. Error answers become *Error.
func (c *Client) do(ctx context.Context, req request) (*http.Response, error) {
	var payload []byte
	if req.json != nil {
		b, err := json.Marshal(req.json)
		if err != nil {
			return nil, fmt.Errorf("corral: encode request: %w", err)
		}
		payload, req.ctype = b, "application/json"
	}
	seeker, _ := req.body.(io.ReadSeeker)
	var start int64
	if seeker != nil {
		var err error
		if start, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			seeker = nil
		}
	}
	u := *c.base
	setPath(&u, c.base, req.path)
	u.RawQuery = req.query.Encode()
	for attempt := 1; ; attempt++ {
		var body io.Reader
		var size int64
		switch {
		case payload != nil:
			body, size = bytes.NewReader(payload), int64(len(payload))
		case req.body != nil:
			body, size = req.body, req.size
			if attempt > 1 {
				if _, err := seeker.Seek(start, io.SeekStart); err != nil {
					return nil, fmt.Errorf("corral: rewind body: %w", err)
				}
			}
		}
		hr, err := http.NewRequestWithContext(ctx, req.method, u.String(), body)
		if err != nil {
			return nil, fmt.Errorf("corral: %w", err)
		}
		if body != nil {
			hr.ContentLength = size
		}
		c.header(hr.Header)
		if req.ctype != "" {
			hr.Header.Set("Content-Type", req.ctype)
		}
		if req.accept != "" {
			hr.Header.Set("Accept", req.accept)
		}
		resp, err := c.http.Do(hr)
		replayable := req.body == nil || seeker != nil
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if req.idempotent && replayable && attempt < c.retry.Attempts {
				if werr := c.wait(ctx, attempt, 0); werr != nil {
					return nil, werr
				}
				continue
			}
			return nil, fmt.Errorf("corral: %s %s: %w", req.method, req.path, err)
		}
		if resp.StatusCode < 300 {
			return resp, nil
		}
		apiErr := readError(resp)
		retryable := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable ||
			req.idempotent && (resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusGatewayTimeout)
		if retryable && replayable && attempt < c.retry.Attempts {
			if werr := c.wait(ctx, attempt, retryAfter(resp.Header)); werr != nil {
				return nil, werr
			}
			continue
		}
		return nil, apiErr
	}
}

func (c *Client) header(h http.Header) {
	h.Set("Authorization", "Bearer "+c.key)
	h.Set("User-Agent", c.agent)
}

// wait sleeps before attempt+1: after (from Retry-After) if set, else an
// exponential backoff with full jitter.
func (c *Client) wait(ctx context.Context, attempt int, after time.Duration) error {
	d := after
	if d <= 0 {
		ceil := c.retry.Base << min(attempt-1, 20)
		if ceil > c.retry.Max || ceil <= 0 {
			ceil = c.retry.Max
		}
		d = rand.N(ceil) + 1
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryAfter reads a Retry-After header (seconds or an HTTP date); 0 if
// absent or in the past.
func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		// "0" still waits a moment, not a busy loop.
		return max(time.Duration(n)*time.Second, 10*time.Millisecond)
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 10*time.Millisecond)
	}
	return 0
}

// readError reads an error answer and closes its body.
func readError(resp *http.Response) *Error {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb types.Error
	e := &Error{Status: resp.StatusCode}
	if json.Unmarshal(b, &eb) == nil && eb.Error.Code != "" {
		e.Code, e.Message = eb.Error.Code, eb.Error.Message
		return e
	}
	e.Code = strings.ReplaceAll(strings.ToLower(http.StatusText(resp.StatusCode)), " ", "_")
	e.Message = strings.TrimSpace(string(b))
	return e
}

// call sends req and decodes a JSON answer into out (if not nil).
func (c *Client) call(ctx context.Context, req request, out any) error {
	resp, err := c.do(ctx, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("corral: decode %s %s answer: %w", req.method, req.path, err)
	}
	return nil
}

// Health returns GET /health: the server's status and version. It needs no
// key.
func (c *Client) Health(ctx context.Context) (types.Health, error) {
	var h types.Health
	err := c.call(ctx, request{method: http.MethodGet, path: "/health", idempotent: true}, &h)
	return h, err
}

// isNotFound reports whether err is a 404.
func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// escape escapes each segment of a workspace path for a URL.
func escape(p string) string {
	p = strings.TrimLeft(p, "/")
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// setPath sets u's path to base's followed by escaped, an escaped path.
func setPath(u *url.URL, base *url.URL, escaped string) {
	raw := base.EscapedPath() + escaped
	p, err := url.PathUnescape(raw)
	if err != nil {
		p = base.Path + escaped
	}
	u.Path, u.RawPath = p, raw
}
