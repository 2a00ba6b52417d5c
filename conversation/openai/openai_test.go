package openai_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/conversation/openai"
	"github.com/corralhq/corral/errdefs"
)

// server answers each request with the next handler of a script.
func server(t *testing.T, script ...http.HandlerFunc) (*httptest.Server, *int) {
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		i := n
		n++
		mu.Unlock()
		if r.URL.Path != "/v1/chat/completions" {
			http.NotFound(w, r)
			return
		}
		if i >= len(script) {
			http.Error(w, "script ended", http.StatusTeapot)
			return
		}
		script[i](w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func status(code int, header, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if header != "" {
			k, v, _ := strings.Cut(header, ": ")
			w.Header().Set(k, v)
		}
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

const answer = `{"id":"x","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,
  "tool_calls":[{"id":"call_1","type":"function","function":{"name":"run_command","arguments":{"command":"ls"}}},
                {"id":"call_2","type":"function","function":{"name":"finish","arguments":"{\"summary\":\"ok\"}"}}]}}]}`

func TestCompleteRetriesHonouringRetryAfter(t *testing.T) {
	srv, n := server(t,
		status(429, "Retry-After: 1", `{"error":{"message":"rate limited"}}`),
		status(502, "", "bad gateway"),
		status(200, "", answer),
	)
	var waits []time.Duration
	var statuses []int
	c, err := openai.New(openai.Config{BaseURL: srv.URL + "/v1/", Model: "m", MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second,
		OnRetry: func(attempt, status int, wait time.Duration) {
			waits = append(waits, wait)
			statuses = append(statuses, status)
		}})
	if err != nil {
		t.Fatal(err)
	}
	choice, err := c.Complete(context.Background(), openai.Request{Messages: []openai.Message{{Role: "user", Content: "hi"}}})
	if err != nil {
		t.Fatal(err)
	}
	if *n != 3 || len(waits) != 2 || waits[0] != time.Second || statuses[0] != 429 || statuses[1] != 502 || waits[1] > 2*time.Millisecond {
		t.Fatalf("%d requests, waits %v, statuses %v", *n, waits, statuses)
	}
	calls := choice.Message.ToolCalls
	// Arguments arrive as a string or, from some servers, as an object.
	if len(calls) != 2 || calls[0].Function.Arguments != `{"command":"ls"}` || calls[1].Function.Arguments != `{"summary":"ok"}` {
		t.Fatalf("calls %+v", calls)
	}
}

func TestRetryAfterIsCappedAndRetriesEnd(t *testing.T) {
	srv, n := server(t,
		status(429, "Retry-After: 3600", "busy"),
		status(503, "", "busy"),
	)
	var waits []time.Duration
	c, _ := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: "m", MaxRetries: 1, MaxBackoff: 5 * time.Millisecond,
		OnRetry: func(_, _ int, wait time.Duration) { waits = append(waits, wait) }})
	_, err := c.Complete(context.Background(), openai.Request{})
	if !errors.Is(err, errdefs.ErrUnavailable) || errdefs.Code(err) != "llm_unavailable" || !strings.Contains(err.Error(), "503") {
		t.Fatalf("error %v", err)
	}
	if *n != 2 || len(waits) != 1 || waits[0] != 5*time.Millisecond {
		t.Fatalf("%d requests, waits %v", *n, waits)
	}
}

func TestClientErrorsAreNotRetried(t *testing.T) {
	for _, tc := range []struct {
		code  int
		class error
		ecode string
	}{{401, errdefs.ErrUnauthenticated, "llm_auth"}, {404, errdefs.ErrInvalidArgument, "llm_bad_request"}} {
		srv, n := server(t, status(tc.code, "", `{"error":{"message":"nope"}}`))
		c, _ := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: "m", APIKey: "sk-secret"})
		_, err := c.Complete(context.Background(), openai.Request{})
		if !errors.Is(err, tc.class) || errdefs.Code(err) != tc.ecode || *n != 1 || !strings.Contains(err.Error(), "nope") || strings.Contains(err.Error(), "sk-secret") {
			t.Fatalf("%d: %v after %d requests", tc.code, err, *n)
		}
	}
}

func TestAttemptTimeoutAndCancel(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	hang := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	srv, _ := server(t, hang, hang)
	c, _ := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: "m", Timeout: 50 * time.Millisecond, MaxRetries: -1})
	_, err := c.Complete(context.Background(), openai.Request{})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("timeout: %v", err)
	}
	c2, _ := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: "m"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c2.Complete(ctx, openai.Request{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestConfigIsChecked(t *testing.T) {
	for _, cfg := range []openai.Config{{Model: "m"}, {BaseURL: "http://127.0.0.1:1"}, {BaseURL: "ftp://x", Model: "m"}} {
		if _, err := openai.New(cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("%+v: %v", cfg, err)
		}
	}
}
