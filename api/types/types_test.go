package types_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/internal/testserver"
)

// strict decodes b into v, refusing unknown fields and trailing data: a
// field the server sends that the wire types lack fails the test.
func strict(t *testing.T, what string, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, b)
	}
	if dec.More() {
		t.Fatalf("%s: trailing data: %s", what, b)
	}
}

type caller struct {
	t   *testing.T
	url string
	key string
}

func (c caller) do(method, path, body string, want int, out any, hdr ...string) []byte {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		c.t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		strict(c.t, method+" "+path, b, out)
	}
	return b
}

// TestWireTypesMatchTheServer drives a real server through every route and
// socket and decodes each answer into the wire types strictly.
func TestWireTypesMatchTheServer(t *testing.T) {
	s := testserver.Start(t)
	c := caller{t: t, url: s.URL, key: s.Key}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c.do("GET", "/health", "", 200, &types.Health{})
	var ws types.Workspace
	c.do("POST", "/workspaces", `{"env": {"A": "1"}, "limits": {"memory": "256MiB", "timeout": "30s"}, "network": {"mode": "none"}}`, 201, &ws)
	raw := c.do("POST", "/workspaces", `{}`, 200, nil, "Accept", "application/x-ndjson")
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var ev types.CreateEvent
		strict(t, "create event", sc.Bytes(), &ev)
	}
	var list types.WorkspaceList
	c.do("GET", "/workspaces?limit=1", "", 200, &list)
	c.do("GET", "/workspaces/"+ws.ID, "", 200, &types.Workspace{})
	c.do("POST", "/workspaces/"+ws.ID+"/execute", `{"command": "echo hi; exit 2", "stdin": "x"}`, 200, &types.ExecuteResult{})
	c.do("PUT", "/workspaces/"+ws.ID+"/files/d/f.txt?mode=0600", "data", 201, &types.FileInfo{})
	c.do("GET", "/workspaces/"+ws.ID+"/files/d", "", 200, &types.DirListing{})
	c.do("GET", "/workspaces/"+ws.ID+"/files/d/f.txt?stat=1", "", 200, &types.FileInfo{})
	c.do("GET", "/workspaces/"+ws.ID+"/files/nope", "", 404, &types.Error{})
	c.do("GET", "/workspaces?after=bad", "", 400, &types.Error{})

	// The exec socket's frames, including an error frame.
	wsURL := "ws" + strings.TrimPrefix(s.URL, "http")
	h := http.Header{"Authorization": {"Bearer " + s.Key}}
	conn, _, err := websocket.Dial(ctx, wsURL+"/workspaces/"+ws.ID+"/exec", &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatal(err)
	}
	start, _ := json.Marshal(types.ExecClientFrame{Type: "start", Command: types.Command{Command: "echo out; echo err >&2"}})
	if err := conn.Write(ctx, websocket.MessageText, start); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for !kinds["exit"] {
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f types.ExecServerFrame
		strict(t, "exec frame", b, &f)
		kinds[f.Type] = true
	}
	conn.CloseNow()
	conn, _, err = websocket.Dial(ctx, wsURL+"/workspaces/"+ws.ID+"/exec", &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.Write(ctx, websocket.MessageText, []byte(`{"type":"start"}`))
	_, b, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ef types.ExecServerFrame
	strict(t, "exec error frame", b, &ef)
	if ef.Type != "error" || ef.Error == nil {
		t.Fatalf("exec error frame: %s", b)
	}
	conn.CloseNow()
	if !kinds["started"] || !kinds["stdout"] || !kinds["stderr"] {
		t.Fatalf("exec frames seen: %v", kinds)
	}

	// Conversations.
	s.LLM.Say(testserver.Call("c1", "run_command", map[string]string{"command": "echo hello"}), testserver.Reply("ok"))
	var cv types.Conversation
	c.do("POST", "/conversations", `{"workspace_id": "`+ws.ID+`"}`, 201, &cv)
	c.do("GET", "/conversations", "", 200, &types.ConversationList{})
	c.do("GET", "/conversations/"+cv.ID, "", 200, &types.Conversation{})
	c.do("POST", "/conversations/"+cv.ID+"/messages", `{"content": "go"}`, 202, &types.Event{})
	conn, _, err = websocket.Dial(ctx, wsURL+"/conversations/"+cv.ID+"/stream?after=0", &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(16 << 20)
	seen := map[string]bool{}
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f types.StreamFrame
		strict(t, "stream frame", b, &f)
		if f.Event == nil {
			continue
		}
		seen[f.Kind] = true
		var payload any
		switch f.Kind {
		case types.KindMessage:
			payload = &types.MessagePayload{}
		case types.KindAction:
			payload = &types.ActionPayload{}
		case types.KindOutput:
			payload = &types.OutputPayload{}
		case types.KindObservation:
			payload = &types.ObservationPayload{}
		case types.KindError:
			payload = &types.ErrorPayload{}
		case types.KindState:
			payload = &types.StatePayload{}
		default:
			t.Fatalf("unknown event kind %q", f.Kind)
		}
		strict(t, f.Kind+" payload", f.Payload, payload)
		if st, ok := payload.(*types.StatePayload); ok && st.State == types.ConversationWaiting {
			break
		}
	}
	for _, k := range []string{types.KindMessage, types.KindAction, types.KindOutput, types.KindObservation, types.KindState} {
		if !seen[k] {
			t.Errorf("no %s event seen", k)
		}
	}
	c.do("GET", "/conversations/"+cv.ID+"/events?after=0&limit=3", "", 200, &types.EventList{})
	c.do("POST", "/conversations/"+cv.ID+"/interrupt", "", 200, &types.Conversation{})
	// Deleting ends the stream with an error frame.
	c.do("DELETE", "/conversations/"+cv.ID, "", 204, nil)
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("stream ended without an error frame: %v", err)
		}
		var f types.StreamFrame
		strict(t, "stream frame", b, &f)
		if f.Type == "error" {
			if f.Error == nil || f.Error.Code != "not_found" {
				t.Fatalf("error frame %s", b)
			}
			break
		}
	}
	c.do("DELETE", "/workspaces/"+ws.ID, "", 204, nil)
}
