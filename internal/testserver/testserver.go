// Package testserver runs a real Corral server inside a test: the api
// router over a real SQLite file in t.TempDir, the process runtime and the
// conversation service, whose LLM is a scripted local chat-completions
// server. Restart stops every part of the server (open streams are closed
// with 1001, as at a real shutdown) and opens them again on the same data
// directory behind the same URL, so clients can test resuming.
package testserver

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/api"
	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/conversation/openai"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
	"github.com/corralhq/corral/workspace"

	_ "github.com/corralhq/corral/runtime/process" // the runtime the server uses
)

// Options changes how a test server is set up.
type Options struct {
	// SubscriberBuffer is the conversation service's (0: its default).
	SubscriberBuffer int
	// SmallSendBuffer makes every accepted connection's socket send
	// buffer tiny, so that a client that stops reading blocks the server's
	// writes after a few KB.
	SmallSendBuffer bool
}

// Server is a running test server. Its URL stays the same across Restart.
type Server struct {
	URL string
	// Key is an API key of the user "alice"; OtherKey one of "bob".
	Key, OtherKey string
	// LLM is the scripted model the conversations talk to.
	LLM *LLM

	t       testing.TB
	opts    Options
	dir     string
	id      string // the runtime's server ID, kept across restarts
	http    *httptest.Server
	handler atomic.Pointer[http.Handler]
	mu      sync.Mutex
	stack   *stack
}

type stack struct {
	db  *store.DB
	rt  runtime.Runtime
	mgr *workspace.Manager
	svc *conversation.Service
}

// Start starts a server; everything it made is removed when the test ends.
func Start(t testing.TB) *Server { return StartWith(t, Options{}) }

// StartWith starts a server set up as opts says.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	// A server ID of its own: the runtime labels (and reconciles) its
	// sandboxes by it, and other test servers run at the same time.
	s := &Server{t: t, opts: opts, dir: t.TempDir(), id: "srv_test_" + store.NewID("x")[2:], LLM: NewLLM(t)}
	s.setHandler(unavailable())
	s.http = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*s.handler.Load()).ServeHTTP(w, r)
	}))
	if opts.SmallSendBuffer {
		s.http.Listener = smallBufferListener{s.http.Listener}
	}
	s.http.Start()
	s.URL = s.http.URL
	s.open()
	ctx := context.Background()
	for i, name := range []string{"alice", "bob"} {
		u, err := s.stack.db.EnsureUser(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		key, _, err := s.stack.db.CreateKey(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			s.Key = key
		} else {
			s.OtherKey = key
		}
	}
	t.Cleanup(func() {
		s.mu.Lock()
		st := s.stack
		s.mu.Unlock()
		if st != nil {
			rows, _ := st.db.AllWorkspaces(ctx)
			for _, r := range rows {
				_ = st.mgr.Delete(ctx, r.UserID, r.ID)
			}
		}
		s.stop()
		s.http.Close()
	})
	return s
}

// unavailable answers what a server that is not up yet would: 503 with
// Retry-After.
func unavailable() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "0")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: "unavailable", Message: "server restarting"}})
	})
}

func (s *Server) setHandler(h http.Handler) { s.handler.Store(&h) }

func (s *Server) open() {
	t := s.t
	ctx := context.Background()
	log := hclog.New(&hclog.LoggerOptions{Name: "testserver", Level: hclog.Warn, Output: io.Discard})
	db, err := store.Open(ctx, filepath.Join(s.dir, "corral.db"))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.Open("process", runtime.Config{DataDir: filepath.Join(s.dir, "runtime"), ServerID: s.id,
		InitPath: testbin.Corral(t), Logger: log})
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	mgr := workspace.New(workspace.Config{DB: db, Runtime: rt, Policy: policy.DefaultConfig(), Logger: log})
	if err := mgr.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	svc, err := conversation.New(db, mgr, conversation.Config{LLM: conversation.LLMConfig{BaseURL: s.LLM.URL + "/v1", Model: "m"},
		SubscriberBuffer: s.opts.SubscriberBuffer, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.stack = &stack{db: db, rt: rt, mgr: mgr, svc: svc}
	s.mu.Unlock()
	s.setHandler(api.New(api.Config{DB: db, Workspaces: mgr, Conversations: svc, Logger: log, Version: "test"}).Handler())
}

func (s *Server) stop() {
	s.setHandler(unavailable())
	s.mu.Lock()
	st := s.stack
	s.stack = nil
	s.mu.Unlock()
	if st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = st.svc.Close(ctx)
	st.mgr.Close()
	st.rt.Close()
	st.db.Close()
}

// Restart stops the server and starts it again on the same data. Between
// the two, requests are answered 503 with Retry-After: 0.
func (s *Server) Restart() {
	s.t.Helper()
	s.stop()
	s.open()
}

// LLM is a local server speaking the chat-completions protocol: each
// request gets the next scripted reply, "done" past the end.
type LLM struct {
	URL    string
	mu     sync.Mutex
	script []openai.Message
}

// NewLLM starts a scripted model for a server started otherwise (for
// example `corral serve` with CORRAL_LLM_BASE_URL=URL/v1).
func NewLLM(t testing.TB) *LLM {
	l := &LLM{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req openai.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.URL.Path != "/v1/chat/completions" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		l.mu.Lock()
		m := openai.Message{Role: "assistant", Content: "done"}
		if len(l.script) > 0 {
			m, l.script = l.script[0], l.script[1:]
		}
		l.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(openai.Response{ID: "x", Choices: []openai.Choice{{Message: m, FinishReason: "stop"}}})
	}))
	t.Cleanup(srv.Close)
	l.URL = srv.URL
	return l
}

// Say queues the model's next replies.
func (l *LLM) Say(msgs ...openai.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.script = append(l.script, msgs...)
}

// Reply is a plain assistant message.
func Reply(content string) openai.Message {
	return openai.Message{Role: "assistant", Content: content}
}

// Call is an assistant message calling tool name with args.
func Call(id, name string, args any) openai.Message {
	b, _ := json.Marshal(args)
	return openai.Message{Role: "assistant", ToolCalls: []openai.ToolCall{{ID: id, Type: "function",
		Function: openai.FunctionCall{Name: name, Arguments: openai.Arguments(b)}}}}
}

type smallBufferListener struct{ net.Listener }

func (l smallBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}
