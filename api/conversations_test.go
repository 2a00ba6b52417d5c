package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/conversation/openai"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
	"github.com/corralhq/corral/workspace"

	_ "github.com/corralhq/corral/runtime/process"
)

// The workspace manager is what the server gives the conversation engine.
var _ conversation.Workspaces = (*workspace.Manager)(nil)

// scriptedLLM is a local server speaking the chat-completions protocol:
// each request gets the next scripted reply; past the end, "done".
type scriptedLLM struct {
	srv    *httptest.Server
	mu     sync.Mutex
	script []openai.Message
	n      int
}

func newScriptedLLM(t *testing.T, script ...openai.Message) *scriptedLLM {
	l := &scriptedLLM{script: script}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req openai.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.URL.Path != "/v1/chat/completions" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		l.mu.Lock()
		m := openai.Message{Role: "assistant", Content: "done"}
		if l.n < len(l.script) {
			m = l.script[l.n]
		}
		l.n++
		l.mu.Unlock()
		writeJSON(w, http.StatusOK, openai.Response{ID: "x", Choices: []openai.Choice{{Message: m, FinishReason: "stop"}}})
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func scriptedCall(id, name string, args any) openai.Message {
	b, _ := json.Marshal(args)
	return openai.Message{Role: "assistant", ToolCalls: []openai.ToolCall{{ID: id, Type: "function",
		Function: openai.FunctionCall{Name: name, Arguments: openai.Arguments(b)}}}}
}

// convEnv is a server with the conversation routes mounted as the lead
// mounts them, over a real SQLite file and the real process runtime.
type convEnv struct {
	t          *testing.T
	url        string
	handler    http.Handler // the router under test
	svc        *conversation.Service
	db         *store.DB
	alice, bob string
}

func newConvEnv(t *testing.T, llmURL string) *convEnv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := store.Open(ctx, filepath.Join(dir, "corral.db"))
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.Discard})
	rt, err := runtime.Open("process", runtime.Config{DataDir: filepath.Join(dir, "rt"), ServerID: "conv_test",
		InitPath: testbin.Corral(t), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mgr := workspace.New(workspace.Config{DB: db, Runtime: rt, Policy: policy.DefaultConfig(), Logger: log})
	cfg := conversation.Config{LLM: conversation.LLMConfig{BaseURL: llmURL, Model: "m"}, Logger: log}
	svc, err := conversation.New(db, mgr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{DB: db, Workspaces: mgr, Conversations: svc, Logger: log}).Handler()
	srv := httptest.NewServer(h)
	e := &convEnv{t: t, url: srv.URL, handler: h, svc: svc, db: db}
	for _, name := range []string{"alice", "bob"} {
		u, err := db.EnsureUser(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		key, _, err := db.CreateKey(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		if name == "alice" {
			e.alice = key
		} else {
			e.bob = key
		}
	}
	t.Cleanup(func() {
		srv.Close()
		svc.Close(ctx)
		rows, _ := db.AllWorkspaces(ctx)
		for _, row := range rows {
			mgr.Delete(ctx, row.UserID, row.ID)
		}
		rt.Close()
		db.Close()
	})
	return e
}

func (e *convEnv) do(key, method, path, body string, want int, out any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
}

// dial opens the stream, authenticating with a header or, if firstFrame,
// with the first frame as browsers do.
func (e *convEnv) dial(key, id string, after int64, firstFrame bool) (*websocket.Conn, StreamFrame) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{}
	if !firstFrame {
		opts.HTTPHeader = http.Header{"Authorization": {"Bearer " + key}}
	}
	conn, _, err := websocket.Dial(ctx, strings.Replace(e.url, "http", "ws", 1)+"/conversations/"+id+"/stream?after="+seqText(after), opts)
	if err != nil {
		e.t.Fatal(err)
	}
	conn.SetReadLimit(4 << 20)
	if firstFrame {
		b, _ := json.Marshal(map[string]string{"type": "auth", "key": key})
		if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
			e.t.Fatal(err)
		}
	}
	f := readStreamFrame(e.t, conn)
	if f.Type != "snapshot" || f.Conversation == nil || f.Conversation.ID != id {
		e.t.Fatalf("first frame %+v", f)
	}
	return conn, f
}

func seqText(n int64) string { b, _ := json.Marshal(n); return string(b) }

func readStreamFrame(t *testing.T, conn *websocket.Conn) StreamFrame {
	t.Helper()
	f, err := tryReadStreamFrame(conn)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func tryReadStreamFrame(conn *websocket.Conn) (StreamFrame, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, data, err := conn.Read(ctx)
	if err != nil {
		return StreamFrame{}, err
	}
	var f StreamFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return StreamFrame{}, err
	}
	return f, nil
}

// readUntilState reads event frames until a state event names state.
func readUntilState(t *testing.T, conn *websocket.Conn, state conversation.State) []store.Event {
	t.Helper()
	var evs []store.Event
	for {
		f := readStreamFrame(t, conn)
		if f.Type != "event" || f.Event == nil {
			t.Fatalf("frame %+v", f)
		}
		evs = append(evs, *f.Event)
		if f.Kind == conversation.KindState && strings.Contains(string(f.Payload), `"state":"`+string(state)+`"`) {
			return evs
		}
	}
}

func TestConversationOverHTTP(t *testing.T) {
	llm := newScriptedLLM(t,
		scriptedCall("c1", "run_command", map[string]string{"command": "echo hello > out.txt; cat out.txt; echo to-stderr >&2"}),
		scriptedCall("c2", "finish", map[string]string{"summary": "said hello"}),
	)
	e := newConvEnv(t, llm.srv.URL+"/v1")

	// A conversation with a workspace made on the spot.
	var c conversation.Info
	e.do(e.alice, "POST", "/conversations", `{"workspace": {"limits": {"timeout": "30s"}}}`, 201, &c)
	if !strings.HasPrefix(c.ID, "cv_") || !strings.HasPrefix(c.WorkspaceID, "ws_") || c.State != conversation.StateIdle {
		t.Fatalf("created %+v", c)
	}
	conn, snap := e.dial(e.alice, c.ID, 0, false)
	defer conn.CloseNow()
	if snap.Conversation.State != conversation.StateIdle || snap.Conversation.LastSeq != 0 {
		t.Fatalf("snapshot %+v", snap.Conversation)
	}
	var msg store.Event
	e.do(e.alice, "POST", "/conversations/"+c.ID+"/messages", `{"content": "say hello"}`, 202, &msg)
	if msg.Seq != 1 || msg.Kind != "message" || msg.Source != "user" {
		t.Fatalf("message %+v", msg)
	}
	streamed := readUntilState(t, conn, conversation.StateFinished)
	var out strings.Builder
	var obs conversation.ObservationPayload
	for _, ev := range streamed {
		switch ev.Kind {
		case conversation.KindOutput:
			var p conversation.OutputPayload
			json.Unmarshal(ev.Payload, &p)
			out.WriteString(p.Data)
		case conversation.KindObservation:
			if obs.CallID == "" {
				json.Unmarshal(ev.Payload, &obs)
			}
		}
	}
	if !strings.Contains(out.String(), "hello") || !strings.Contains(out.String(), "to-stderr") || obs.ExitCode != 0 || !strings.Contains(obs.Output, "hello") {
		t.Fatalf("output %q, observation %+v", out.String(), obs)
	}

	// The same events, page by page.
	var all []store.Event
	for after := int64(0); ; {
		var page EventList
		e.do(e.alice, "GET", "/conversations/"+c.ID+"/events?after="+seqText(after)+"&limit=3", "", 200, &page)
		all = append(all, page.Events...)
		if len(page.Events) == 0 {
			if page.NextAfter != after {
				t.Fatalf("next_after %d at the end, want %d", page.NextAfter, after)
			}
			break
		}
		after = page.NextAfter
	}
	if len(all) != len(streamed) {
		t.Fatalf("%d stored events, %d streamed", len(all), len(streamed))
	}
	for i := range all {
		if all[i].ID != streamed[i].ID || all[i].Seq != int64(i+1) || !bytes.Equal(all[i].Payload, streamed[i].Payload) {
			t.Fatalf("event %d differs: %+v vs %+v", i, all[i], streamed[i])
		}
	}

	var got conversation.Info
	e.do(e.alice, "GET", "/conversations/"+c.ID, "", 200, &got)
	if got.State != conversation.StateFinished || got.LastSeq != int64(len(all)) {
		t.Fatalf("conversation %+v", got)
	}
	var list ConversationList
	e.do(e.alice, "GET", "/conversations", "", 200, &list)
	if len(list.Conversations) != 1 || list.Conversations[0].ID != c.ID {
		t.Fatalf("list %+v", list)
	}
	e.do(e.alice, "POST", "/conversations/"+c.ID+"/interrupt", "", 200, &got)

	// Another user sees nothing.
	e.do(e.bob, "GET", "/conversations", "", 200, &list)
	if len(list.Conversations) != 0 {
		t.Fatalf("bob lists %+v", list)
	}
	for _, req := range [][2]string{{"GET", ""}, {"DELETE", ""}, {"POST", "/messages"}, {"POST", "/interrupt"}, {"GET", "/events"}} {
		body := ""
		if req[1] == "/messages" {
			body = `{"content":"hi"}`
		}
		e.do(e.bob, req[0], "/conversations/"+c.ID+req[1], body, 404, nil)
	}
	e.do(e.bob, "POST", "/conversations", `{"workspace_id": "`+c.WorkspaceID+`"}`, 404, nil)
	ctx := context.Background()
	_, _, err := websocket.Dial(ctx, strings.Replace(e.url, "http", "ws", 1)+"/conversations/"+c.ID+"/stream",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + e.bob}}})
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("bob's stream: %v", err)
	}

	// Bad requests.
	e.do(e.alice, "POST", "/conversations", `{}`, 400, nil)
	e.do(e.alice, "POST", "/conversations", `{"workspace_id": "`+c.WorkspaceID+`", "workspace": {}}`, 400, nil)
	e.do(e.alice, "POST", "/conversations", `{"workspace_id": "`+c.WorkspaceID+`", "model": "x"}`, 400, nil)
	e.do(e.alice, "POST", "/conversations", `{"workspace_id": "`+c.WorkspaceID+`", "llm": {"api_key": "k"}}`, 422, nil)
	e.do(e.alice, "POST", "/conversations/"+c.ID+"/messages", `{"content": ""}`, 400, nil)
	e.do(e.alice, "GET", "/conversations/"+c.ID+"/events?after=-1", "", 400, nil)
	e.do("", "GET", "/conversations", "", 401, nil)

	// Deleting ends the stream with an error frame, then "not found": do
	// not retry.
	e.do(e.alice, "DELETE", "/conversations/"+c.ID, "", 204, nil)
	f, err := tryReadStreamFrame(conn)
	for err == nil && f.Type == "event" {
		f, err = tryReadStreamFrame(conn) // events of the deletion itself
	}
	if err != nil || f.Type != "error" || f.Error == nil || f.Error.Code != "not_found" {
		t.Fatalf("stream after delete: want an error frame, got %+v, %v", f, err)
	}
	_, err = tryReadStreamFrame(conn)
	if websocket.CloseStatus(err) != CloseNotFound {
		t.Fatalf("stream after delete: %v", err)
	}
	e.do(e.alice, "GET", "/conversations/"+c.ID, "", 404, nil)
}

func TestConversationStreamResumesWithoutGapsOrDuplicates(t *testing.T) {
	var script []openai.Message
	for i := range 8 {
		script = append(script, scriptedCall("c"+seqText(int64(i)), "run_command", map[string]string{"command": "echo step " + seqText(int64(i))}))
	}
	script = append(script, scriptedCall("end", "finish", map[string]string{}))
	llm := newScriptedLLM(t, script...)
	e := newConvEnv(t, llm.srv.URL+"/v1")
	// A second conversation in the workspace of a first one.
	var c conversation.Info
	e.do(e.alice, "POST", "/conversations", `{"workspace": {}}`, 201, &c)
	var c2 conversation.Info
	e.do(e.alice, "POST", "/conversations", `{"workspace_id": "`+c.WorkspaceID+`"}`, 201, &c2)

	e.do(e.alice, "POST", "/conversations/"+c2.ID+"/messages", `{"content": "go"}`, 202, nil)
	// A browser-style client reads a few events, drops, and comes back
	// from its last seq, until the agent is done.
	var got []store.Event
	last := int64(0)
	for done := false; !done; {
		conn, _ := e.dial(e.alice, c2.ID, last, true)
		for i := 0; i < 4; i++ {
			f := readStreamFrame(t, conn)
			got = append(got, *f.Event)
			last = f.Seq
			if f.Kind == conversation.KindState && strings.Contains(string(f.Payload), `"finished"`) {
				done = true
				break
			}
		}
		conn.Close(websocket.StatusNormalClosure, "")
	}
	var page EventList
	e.do(e.alice, "GET", "/conversations/"+c2.ID+"/events?limit=1000", "", 200, &page)
	if len(got) != len(page.Events) {
		t.Fatalf("got %d events over reconnects, %d stored", len(got), len(page.Events))
	}
	for i := range got {
		if got[i].Seq != int64(i+1) || got[i].ID != page.Events[i].ID {
			t.Fatalf("event %d: seq %d", i, got[i].Seq)
		}
	}
	// A resume point past the end is refused before the upgrade.
	_, _, err := websocket.Dial(context.Background(), strings.Replace(e.url, "http", "ws", 1)+"/conversations/"+c2.ID+"/stream?after=99999",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + e.alice}}})
	if err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("after past the end: %v", err)
	}
}

func TestConversationStreamSaysGoingAwayOnShutdown(t *testing.T) {
	llm := newScriptedLLM(t)
	e := newConvEnv(t, llm.srv.URL+"/v1")
	var c conversation.Info
	e.do(e.alice, "POST", "/conversations", `{"workspace": {}}`, 201, &c)
	conn, _ := e.dial(e.alice, c.ID, 0, false)
	defer conn.CloseNow()
	if err := e.svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := tryReadStreamFrame(conn)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || !strings.Contains(ce.Reason, "resume after=0") {
		t.Fatalf("stream at shutdown: %v", err)
	}
}
