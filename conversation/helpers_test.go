package conversation_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/conversation/openai"
	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// dirWorkspaces runs tools as real processes in a directory per workspace:
// the Workspaces contract without a sandbox, so these tests do not depend on
// a runtime driver. Commands run in their own process group, which is
// killed when ctx ends or the timeout passes.
type dirWorkspaces struct{ root string }

func (d *dirWorkspaces) dir(workspaceID string) (string, error) {
	p := filepath.Join(d.root, workspaceID)
	return p, os.MkdirAll(p, 0o755)
}

func (d *dirWorkspaces) path(workspaceID, p string) (string, error) {
	root, err := d.dir(workspaceID)
	if err != nil {
		return "", err
	}
	c, err := runtime.CleanPath(p)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, c), nil
}

func (d *dirWorkspaces) Exec(ctx context.Context, userID, workspaceID string, spec runtime.ExecSpec) (runtime.Process, error) {
	cwd, err := d.path(workspaceID, spec.Cwd)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Dir = cwd
	cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", spec.Argv, err)
	}
	p := &osProcess{cmd: cmd, exited: make(chan struct{})}
	go func() {
		var timeout <-chan time.Time
		if spec.Timeout > 0 {
			t := time.NewTimer(spec.Timeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-p.exited:
			return
		case <-ctx.Done():
		case <-timeout:
			p.mu.Lock()
			p.timedOut = true
			p.mu.Unlock()
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}()
	return p, nil
}

type osProcess struct {
	cmd    *exec.Cmd
	once   sync.Once
	exited chan struct{}
	res    runtime.ExitResult

	mu       sync.Mutex
	timedOut bool
}

func (p *osProcess) Wait() (runtime.ExitResult, error) {
	p.once.Do(func() {
		err := p.cmd.Wait()
		close(p.exited)
		ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
		switch {
		case ws.Signaled():
			p.res = runtime.SignalResult(ws.Signal())
		case err != nil && p.cmd.ProcessState == nil:
			p.res = runtime.ExitResult{ExitCode: -1}
		default:
			p.res = runtime.ExitResult{ExitCode: p.cmd.ProcessState.ExitCode()}
		}
		p.mu.Lock()
		p.res.TimedOut = p.timedOut
		p.mu.Unlock()
	})
	return p.res, nil
}

func (p *osProcess) Signal(ctx context.Context, sig runtime.Signal) error {
	return syscall.Kill(-p.cmd.Process.Pid, sig.Num())
}

func (p *osProcess) Resize(ctx context.Context, size runtime.WindowSize) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, "no_tty", "no TTY")
}

func (d *dirWorkspaces) ReadFile(ctx context.Context, userID, workspaceID, p string, max int64) ([]byte, error) {
	full, err := d.path(workspaceID, p)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(full)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errdefs.NotFound("%s not found", p)
	}
	if err != nil {
		return nil, err
	}
	if max > 0 && st.Size() > max {
		return nil, errdefs.New(errdefs.ErrTooLarge, "too_large", "%q is %d bytes, more than %d", p, st.Size(), max)
	}
	return os.ReadFile(full)
}

func (d *dirWorkspaces) WriteFile(ctx context.Context, userID, workspaceID, p string, data []byte) error {
	full, err := d.path(workspaceID, p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	return os.WriteFile(full, data, 0o644)
}

// llmServer is a scripted local server speaking the chat-completions
// protocol. Each request takes the next reply of the script; requests past
// the end get a plain "done" answer.
type llmServer struct {
	t   testing.TB
	srv *httptest.Server

	mu       sync.Mutex
	script   []reply
	requests []recorded
}

// reply is one scripted answer: a status (default 200) with headers, a
// message, or a wait on a channel before answering.
type reply struct {
	status  int
	header  map[string]string
	body    string // raw body for errors
	content string
	calls   []openai.ToolCall
	block   chan struct{} // answer only once this is closed (or the client gives up)
}

type recorded struct {
	Auth string
	Req  openai.Request
}

func newLLM(t testing.TB, script ...reply) *llmServer {
	l := &llmServer{t: t, script: script}
	l.srv = httptest.NewServer(http.HandlerFunc(l.serve))
	t.Cleanup(l.srv.Close)
	return l
}

// newPrivateLLM is newLLM on another machine at a private address (not
// this one's), which AllowPrivateLLMOverride opens to a user-chosen
// llm.base_url.
func newPrivateLLM(t testing.TB, script ...reply) *llmServer {
	l := &llmServer{t: t, script: script}
	l.srv = httptest.NewUnstartedServer(http.HandlerFunc(l.serve))
	l.srv.Listener.Close()
	l.srv.Listener = nettest.StartPrivateHost(t).Listen(t)
	l.srv.Start()
	t.Cleanup(l.srv.Close)
	return l
}

func (l *llmServer) URL() string { return l.srv.URL + "/v1" }

func (l *llmServer) push(r ...reply) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.script = append(l.script, r...)
}

func (l *llmServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/chat/completions" || r.Method != http.MethodPost {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var req openai.Request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	l.mu.Lock()
	l.requests = append(l.requests, recorded{Auth: r.Header.Get("Authorization"), Req: req})
	rep := reply{content: "done"}
	if len(l.script) > 0 {
		rep, l.script = l.script[0], l.script[1:]
	}
	l.mu.Unlock()
	if rep.block != nil {
		select {
		case <-rep.block:
		case <-r.Context().Done():
			return
		}
	}
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	if rep.status != 0 && rep.status != http.StatusOK {
		w.WriteHeader(rep.status)
		io.WriteString(w, rep.body)
		return
	}
	finish := "stop"
	if len(rep.calls) > 0 {
		finish = "tool_calls"
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(openai.Response{ID: "chatcmpl-test", Model: req.Model, Choices: []openai.Choice{{
		Message: openai.Message{Role: "assistant", Content: rep.content, ToolCalls: rep.calls}, FinishReason: finish,
	}}})
}

func (l *llmServer) Requests() []recorded {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]recorded(nil), l.requests...)
}

// call builds a scripted tool call.
func call(id, name string, args any) openai.ToolCall {
	b, _ := json.Marshal(args)
	return openai.ToolCall{ID: id, Type: "function", Function: openai.FunctionCall{Name: name, Arguments: openai.Arguments(b)}}
}

// fixture is a Service over a real SQLite file with two users, each with a
// workspace.
type fixture struct {
	t      testing.TB
	dbPath string
	db     *store.DB
	svc    *conversation.Service
	ws     *dirWorkspaces
	cfg    conversation.Config
	alice  store.User
	bob    store.User
	aliceW store.Workspace
	bobW   store.Workspace
}

func testConfig(llmURL string) conversation.Config {
	return conversation.Config{
		LLM:           conversation.LLMConfig{BaseURL: llmURL, Model: "test-model", APIKey: "server-key"},
		LLMRetries:    2,
		LLMMinBackoff: time.Millisecond,
		LLMMaxBackoff: 5 * time.Millisecond,
		Logger:        hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.Discard}),
	}
}

func newFixture(t testing.TB, cfg conversation.Config) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	f := &fixture{t: t, dbPath: filepath.Join(dir, "corral.db"), ws: &dirWorkspaces{root: filepath.Join(dir, "ws")}, cfg: cfg}
	db, err := store.Open(ctx, f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	f.db = db
	for _, name := range []string{"alice", "bob"} {
		u, err := db.CreateUser(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		w := store.Workspace{ID: store.NewID("ws"), UserID: u.ID, Runtime: "test", State: "running"}
		if err := db.CreateWorkspace(ctx, w); err != nil {
			t.Fatal(err)
		}
		if name == "alice" {
			f.alice, f.aliceW = u, w
		} else {
			f.bob, f.bobW = u, w
		}
	}
	f.start()
	t.Cleanup(func() { f.stop() })
	return f
}

// start opens the service (and the store, after a stop).
func (f *fixture) start() {
	f.t.Helper()
	ctx := context.Background()
	if f.db == nil {
		db, err := store.Open(ctx, f.dbPath)
		if err != nil {
			f.t.Fatal(err)
		}
		f.db = db
	}
	svc, err := conversation.New(f.db, f.ws, f.cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := svc.Recover(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.svc = svc
}

// stop closes the service and the store, as a server shutting down does.
func (f *fixture) stop() {
	if f.svc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := f.svc.Close(ctx); err != nil {
			f.t.Error(err)
		}
		f.svc = nil
	}
	if f.db != nil {
		f.db.Close()
		f.db = nil
	}
}

func (f *fixture) create(llm conversation.LLMConfig) store.Conversation {
	f.t.Helper()
	c, err := f.svc.Create(context.Background(), f.alice.ID, conversation.CreateParams{WorkspaceID: f.aliceW.ID, LLM: llm})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// waitState reads a subscription until a state event names one of states
// (after the running state that a message starts), returning every event.
func waitState(t testing.TB, sub *conversation.Subscription, states ...conversation.State) []store.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var evs []store.Event
	for {
		e, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("after %d events: %v", len(evs), err)
		}
		evs = append(evs, e)
		if e.Kind == conversation.KindState {
			var p conversation.StatePayload
			json.Unmarshal(e.Payload, &p)
			for _, s := range states {
				if p.State == s {
					return evs
				}
			}
		}
	}
}

// kinds summarises events as "kind/source" strings, without output events.
func kinds(evs []store.Event) string {
	var parts []string
	for _, e := range evs {
		if e.Kind == conversation.KindOutput {
			continue
		}
		s := e.Kind
		switch e.Kind {
		case conversation.KindState:
			var p conversation.StatePayload
			json.Unmarshal(e.Payload, &p)
			s += ":" + string(p.State)
		case conversation.KindAction:
			var p conversation.ActionPayload
			json.Unmarshal(e.Payload, &p)
			s += ":" + p.Tool
		case conversation.KindMessage:
			s += ":" + e.Source
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func payload[T any](t testing.TB, e store.Event) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(e.Payload, &v); err != nil {
		t.Fatalf("payload of %s event %d: %v", e.Kind, e.Seq, err)
	}
	return v
}

func ofKind(evs []store.Event, kind string) []store.Event {
	var out []store.Event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}
