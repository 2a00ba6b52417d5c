package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// matrixRoute says how the authorization matrix calls one route. Paths
// name alice's resources as {ws} and {cv}.
type matrixRoute struct {
	public bool   // answers without a key
	socket bool   // a WebSocket that authenticates itself (header or first frame)
	path   string // the request path; empty: the route pattern as is
	body   string
	// owned: the route acts on one of alice's resources, so bob's key
	// must get 404 (never 403, never the resource). Routes without a
	// resource are checked by bob's view of them instead (see below).
	owned bool
}

// authMatrix is every route of the router. A route that is missing here
// fails TestAuthorizationMatrix: whoever adds a route decides how it is
// authenticated and proves it.
var authMatrix = map[string]matrixRoute{
	"GET /health":       {public: true},
	"GET /ready":        {public: true},
	"GET /metrics":      {public: true},
	"GET /openapi.json": {public: true},
	"GET /docs":         {public: true},

	"POST /workspaces/":                  {path: "/workspaces", body: `{}`},
	"GET /workspaces/":                   {path: "/workspaces"},
	"GET /workspaces/{id}/":              {path: "/workspaces/{ws}", owned: true},
	"DELETE /workspaces/{id}/":           {path: "/workspaces/{ws}", owned: true},
	"POST /workspaces/{id}/execute":      {path: "/workspaces/{ws}/execute", body: `{"command":"echo pwned > /tmp/x"}`, owned: true},
	"GET /workspaces/{id}/files":         {path: "/workspaces/{ws}/files", owned: true},
	"GET /workspaces/{id}/files/*":       {path: "/workspaces/{ws}/files/secret.txt", owned: true},
	"PUT /workspaces/{id}/files/*":       {path: "/workspaces/{ws}/files/secret.txt", body: "overwritten", owned: true},
	"DELETE /workspaces/{id}/files/*":    {path: "/workspaces/{ws}/files/secret.txt", owned: true},
	"GET /workspaces/{id}/archive":       {path: "/workspaces/{ws}/archive?path=.", owned: true},
	"PUT /workspaces/{id}/archive":       {path: "/workspaces/{ws}/archive?path=.", body: "", owned: true},
	"GET /workspaces/{id}/exec":          {socket: true, path: "/workspaces/{ws}/exec", owned: true},
	"POST /conversations/":               {path: "/conversations", body: `{"workspace_id":"{ws}"}`},
	"GET /conversations/":                {path: "/conversations"},
	"GET /conversations/{id}/":           {path: "/conversations/{cv}", owned: true},
	"DELETE /conversations/{id}/":        {path: "/conversations/{cv}", owned: true},
	"POST /conversations/{id}/messages":  {path: "/conversations/{cv}/messages", body: `{"content":"hi"}`, owned: true},
	"POST /conversations/{id}/interrupt": {path: "/conversations/{cv}/interrupt", owned: true},
	"GET /conversations/{id}/events":     {path: "/conversations/{cv}/events", owned: true},
	"GET /conversations/{id}/stream":     {socket: true, path: "/conversations/{cv}/stream", owned: true},
}

// TestAuthorizationMatrix walks the router and calls every route with no
// key, malformed keys, a revoked key and another user's key: the first
// three answer 401 (4401 on a socket's first frame), the last 404 (4404),
// and alice's resources come through unchanged.
func TestAuthorizationMatrix(t *testing.T) {
	llm := newScriptedLLM(t)
	e := newConvEnv(t, llm.srv.URL)
	ctx := context.Background()

	// alice's resources, and a revoked key of hers.
	var ws struct{ ID string }
	e.do(e.alice, "POST", "/workspaces", `{}`, http.StatusCreated, &ws)
	e.do(e.alice, "PUT", "/workspaces/"+ws.ID+"/files/secret.txt", "alice's", http.StatusCreated, nil)
	var cv struct{ ID string }
	e.do(e.alice, "POST", "/conversations", `{"workspace_id":"`+ws.ID+`"}`, http.StatusCreated, &cv)
	u, err := e.db.UserByName(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	revoked, key, err := e.db.CreateKey(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.db.RevokeKey(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("{ws}", ws.ID, "{cv}", cv.ID)

	// Every route of the real router, conversations mounted.
	var routes []string
	err = chi.Walk(e.handler.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routes = append(routes, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(routes)
	seen := map[string]bool{}
	for _, r := range routes {
		seen[r] = true
		if _, ok := authMatrix[r]; !ok {
			t.Errorf("route %s is not in the authorization matrix (authMatrix in %s): add how to call it", r, "api/authmatrix_test.go")
		}
	}
	for r := range authMatrix {
		if !seen[r] {
			t.Errorf("authMatrix names %s, which the router no longer has", r)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Header forms that carry no usable key.
	type cred struct {
		name   string
		header http.Header
	}
	bad := []cred{
		{"no key", http.Header{}},
		{"empty bearer", http.Header{"Authorization": {"Bearer "}}},
		{"basic scheme", http.Header{"Authorization": {"Basic " + e.alice}}},
		{"key without scheme", http.Header{"Authorization": {e.alice}}},
		{"malformed key", http.Header{"Authorization": {"Bearer not-a-key"}}},
		{"prefix only", http.Header{"Authorization": {"Bearer crl_"}}},
		{"truncated key", http.Header{"Authorization": {"Bearer " + e.alice[:len(e.alice)-1]}}},
		{"long key", http.Header{"Authorization": {"Bearer crl_" + strings.Repeat("A", 4096)}}},
		{"key with spaces", http.Header{"X-Session-API-Key": {"crl_a b c"}}},
		{"revoked key", http.Header{"Authorization": {"Bearer " + revoked}}},
		{"revoked key, session header", http.Header{"X-Session-API-Key": {revoked}}},
	}
	badFrameKeys := map[string]string{"empty": "", "malformed": "not-a-key", "truncated": e.alice[:len(e.alice)-1], "revoked": revoked}

	for _, pattern := range routes {
		mr := authMatrix[pattern]
		method, route, _ := strings.Cut(pattern, " ")
		path := route
		if mr.path != "" {
			path = fill.Replace(mr.path)
		}
		body := fill.Replace(mr.body)
		t.Run(pattern, func(t *testing.T) {
			switch {
			case mr.public:
				if code, _ := e.call(http.Header{}, method, path, body); code != http.StatusOK {
					t.Fatalf("public route answered %d without a key", code)
				}
			case mr.socket:
				for _, c := range bad {
					if status := e.socketHandshake(c.header, path); status != http.StatusUnauthorized {
						t.Errorf("%s in the header: handshake %d, want 401", c.name, status)
					}
				}
				for name, k := range badFrameKeys {
					if code := e.socketFirstFrame(path, map[string]string{"type": "auth", "key": k}); code != CloseUnauthenticated {
						t.Errorf("%s key in the first frame: close %d, want %d", name, code, CloseUnauthenticated)
					}
				}
				if code := e.socketFirstFrame(path, map[string]string{"type": "start", "command": "true"}); code != CloseUnauthenticated {
					t.Errorf("a start frame before auth: close %d, want %d", code, CloseUnauthenticated)
				}
				bob := http.Header{"Authorization": {"Bearer " + e.bob}}
				if status := e.socketHandshake(bob, path); status != http.StatusNotFound {
					t.Errorf("bob's key in the header: handshake %d, want 404", status)
				}
				if code := e.socketFirstFrame(path, map[string]string{"type": "auth", "key": e.bob}); code != CloseNotFound {
					t.Errorf("bob's key in the first frame: close %d, want %d", code, CloseNotFound)
				}
			default:
				for _, c := range bad {
					code, data := e.call(c.header, method, path, body)
					var eb ErrorBody
					_ = json.Unmarshal(data, &eb)
					if code != http.StatusUnauthorized || eb.Error.Code != "unauthenticated" {
						t.Errorf("%s: %d %s, want 401 unauthenticated", c.name, code, data)
					}
				}
				bob := http.Header{"Authorization": {"Bearer " + e.bob}}
				code, data := e.call(bob, method, path, body)
				switch {
				case mr.owned:
					if code != http.StatusNotFound {
						t.Errorf("bob's key on alice's resource: %d %s, want 404", code, data)
					}
				case strings.HasPrefix(pattern, "GET "):
					// A list answers bob, without alice's resources.
					if code != http.StatusOK || strings.Contains(string(data), ws.ID) || strings.Contains(string(data), cv.ID) {
						t.Errorf("bob's list: %d %s", code, data)
					}
				case pattern == "POST /conversations/":
					if code != http.StatusNotFound {
						t.Errorf("bob's conversation in alice's workspace: %d %s, want 404", code, data)
					}
				case pattern == "POST /workspaces/":
					// Bob may create his own; remove it again.
					var mine struct{ ID string }
					if code != http.StatusCreated || json.Unmarshal(data, &mine) != nil {
						t.Fatalf("bob's create: %d %s", code, data)
					}
					e.do(e.bob, "DELETE", "/workspaces/"+mine.ID, "", http.StatusNoContent, nil)
				default:
					t.Fatalf("no rule for bob on %s", pattern)
				}
			}
		})
	}

	// Nothing of alice's was touched by the refused calls.
	e.do(e.alice, "GET", "/workspaces/"+ws.ID, "", http.StatusOK, nil)
	e.do(e.alice, "GET", "/conversations/"+cv.ID, "", http.StatusOK, nil)
	if code, data := e.call(http.Header{"Authorization": {"Bearer " + e.alice}}, "GET", "/workspaces/"+ws.ID+"/files/secret.txt", ""); code != http.StatusOK || string(data) != "alice's" {
		t.Fatalf("alice's file after the matrix: %d %q", code, data)
	}
	var res struct{ Stdout string }
	e.do(e.alice, "POST", "/workspaces/"+ws.ID+"/execute", `{"command":"cat /tmp/x 2>/dev/null || echo clean"}`, http.StatusOK, &res)
	if res.Stdout != "clean\n" {
		t.Fatalf("a refused execute ran: %q", res.Stdout)
	}
	var evs EventList
	e.do(e.alice, "GET", "/conversations/"+cv.ID+"/events", "", http.StatusOK, &evs)
	for _, ev := range evs.Events {
		if ev.Kind == "message" {
			t.Fatalf("a refused message was stored: %+v", ev)
		}
	}
}

// call sends a request with the given headers and returns the status and
// body.
func (e *convEnv) call(h http.Header, method, path, body string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// socketHandshake dials a socket with headers and returns the handshake's
// status. Headers that carry no key at all let the socket open for a
// first-frame key; then a start frame must be refused with
// CloseUnauthenticated, reported as 401.
func (e *convEnv) socketHandshake(h http.Header, path string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.url, "http")+path, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		defer conn.CloseNow()
		if code := e.refusal(ctx, conn, path, map[string]string{"type": "start", "command": "true"}); code != CloseUnauthenticated {
			e.t.Errorf("socket %s opened and closed with %d", path, code)
			return http.StatusSwitchingProtocols
		}
		return http.StatusUnauthorized
	}
	if resp == nil {
		e.t.Fatalf("dial %s: %v", path, err)
	}
	return resp.StatusCode
}

// socketFirstFrame dials a socket without a key, sends frame first and
// returns the close code the server answers with.
func (e *convEnv) socketFirstFrame(path string, frame any) websocket.StatusCode {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.url, "http")+path, nil)
	if err != nil {
		e.t.Fatalf("dial %s: %v", path, err)
	}
	defer conn.CloseNow()
	return e.refusal(ctx, conn, path, frame)
}

// refusal sends frame on an open socket and returns the close code the
// server answers with. The only frame the server may send first is one
// error frame saying why (unauthenticated or not_found): anything else, or
// more than that, fails the test.
func (e *convEnv) refusal(ctx context.Context, conn *websocket.Conn, path string, frame any) websocket.StatusCode {
	e.t.Helper()
	b, _ := json.Marshal(frame)
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		e.t.Fatalf("write first frame: %v", err)
	}
	for frames := 0; ; frames++ {
		_, data, err := conn.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			e.t.Fatalf("read after first frame: %v", err)
		}
		var f struct {
			Type  string      `json:"type"`
			Error ErrorDetail `json:"error"`
		}
		if frames > 0 || json.Unmarshal(data, &f) != nil || f.Type != "error" ||
			(f.Error.Code != "unauthenticated" && f.Error.Code != "not_found") {
			e.t.Errorf("%s sent a refused client more than why it was refused: %s", path, data)
		}
	}
}
