package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/api"
	"github.com/corralhq/corral/workspace"
)

func TestScenarioProcess(t *testing.T) { scenario(t, processBackend) }

// TestScenarioEngines runs the same HTTP scenario on Docker and on rootful
// and rootless Podman.
func TestScenarioEngines(t *testing.T) {
	for _, be := range engineBackends {
		t.Run(be.name, func(t *testing.T) { scenario(t, be) })
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	e := newEnv(t, processBackend)
	var health map[string]string
	e.json("", "GET", "/health", nil, http.StatusOK, &health)
	if health["status"] != "ok" {
		t.Fatalf("health = %v", health)
	}
	var ready struct {
		Ready   bool   `json:"ready"`
		Runtime string `json:"runtime"`
	}
	e.json("", "GET", "/ready", nil, http.StatusOK, &ready)
	if !ready.Ready || ready.Runtime != "process" {
		t.Fatalf("ready = %+v", ready)
	}
	resp, body := e.do("", "GET", "/metrics", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `corral_http_request_duration_seconds_count{method="GET",route="/ready",status="200"} 1`) {
		t.Fatalf("metrics: %d\n%s", resp.StatusCode, body)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, processBackend)
	e.wantError("", "GET", "/workspaces", nil, http.StatusUnauthorized, "unauthenticated")
	e.wantError("crl_not-a-real-key-at-all-000000", "GET", "/workspaces", nil, http.StatusUnauthorized, "unauthenticated")

	// X-Session-API-Key works as well as Bearer.
	req, _ := http.NewRequest("GET", e.url+"/workspaces", nil)
	req.Header.Set("X-Session-API-Key", e.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("X-Session-API-Key: %d", resp.StatusCode)
	}

	// A revoked key stops working at once.
	ctx := context.Background()
	u, _ := e.db.UserByName(ctx, "alice")
	keys, _ := e.db.ListKeys(ctx, u.ID)
	if err := e.db.RevokeKey(ctx, keys[0].ID); err != nil {
		t.Fatal(err)
	}
	e.wantError(e.alice, "GET", "/workspaces", nil, http.StatusUnauthorized, "unauthenticated")

	// The socket refuses a bad first-frame key with an error frame, then
	// a close code.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := dialExec(t, cctx, e.url+"/workspaces/ws_x/exec", "")
	send(t, cctx, c, map[string]any{"type": "auth", "key": "crl_wrong-key-wrong-key-wrong"})
	_, frame, err := c.Read(cctx)
	var ef api.ExecServerFrame
	if err != nil || json.Unmarshal(frame, &ef) != nil || ef.Type != "error" || ef.Error == nil || ef.Error.Code != "unauthenticated" {
		t.Fatalf("socket with a bad key: want an error frame first, got %s, %v", frame, err)
	}
	_, _, err = c.Read(cctx)
	if websocket.CloseStatus(err) != api.CloseUnauthenticated {
		t.Fatalf("socket with a bad key: %v", err)
	}
}

// Another user's workspace is a 404 on every route, never a 403.
func TestCrossUserIsNotFound(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	base := "/workspaces/" + ws.ID
	e.json(e.alice, "PUT", base+"/files/secret.txt", "alice's", http.StatusCreated, nil)
	for _, r := range []struct {
		method, path string
		body         any
	}{
		{"GET", base, nil},
		{"DELETE", base, nil},
		{"POST", base + "/execute", map[string]any{"command": "true"}},
		{"GET", base + "/files/secret.txt", nil},
		{"GET", base + "/files", nil},
		{"PUT", base + "/files/x.txt", "bob was here"},
		{"DELETE", base + "/files/secret.txt", nil},
		{"GET", base + "/archive", nil},
		{"PUT", base + "/archive", ""},
	} {
		e.wantError(e.bob, r.method, r.path, r.body, http.StatusNotFound, "not_found")
	}
	var list api.WorkspaceList
	e.json(e.bob, "GET", "/workspaces", nil, http.StatusOK, &list)
	if len(list.Workspaces) != 0 {
		t.Fatalf("bob sees %+v", list.Workspaces)
	}
	// Bob's socket is refused too: 404 before the upgrade with a header key,
	// an error frame and close code 4404 after a first-frame key.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsURL := strings.Replace(e.url, "http://", "ws://", 1) + base + "/exec"
	_, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + e.bob}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("bob's socket with header: %v %+v", err, resp)
	}
	c := dialExec(t, ctx, e.url+base+"/exec", "")
	send(t, ctx, c, map[string]any{"type": "auth", "key": e.bob})
	_, frame, err := c.Read(ctx)
	var ef api.ExecServerFrame
	if err != nil || json.Unmarshal(frame, &ef) != nil || ef.Type != "error" || ef.Error == nil || ef.Error.Code != "not_found" {
		t.Fatalf("bob's socket with first frame: want an error frame, got %s, %v", frame, err)
	}
	_, _, err = c.Read(ctx)
	if websocket.CloseStatus(err) != api.CloseNotFound {
		t.Fatalf("bob's socket with first frame: %v", err)
	}
	// Alice's file is untouched.
	resp2, body := e.do(e.alice, "GET", base+"/files/secret.txt", nil)
	if resp2.StatusCode != 200 || string(body) != "alice's" {
		t.Fatalf("alice's file: %d %q", resp2.StatusCode, body)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	base := "/workspaces/" + ws.ID
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"malformed json", "POST", "/workspaces", `{"image": `, 400, "invalid_json"},
		{"empty body", "POST", "/workspaces", ``, 400, "invalid_json"},
		{"unknown field", "POST", "/workspaces", `{"imagee": "x"}`, 400, "invalid_json"},
		{"trailing data", "POST", "/workspaces", `{} {}`, 400, "invalid_json"},
		{"wrong type", "POST", "/workspaces", `{"env": []}`, 400, "invalid_json"},
		{"oversized body", "POST", "/workspaces", `{"image":"` + strings.Repeat("a", 2<<20) + `"}`, 413, "body_too_large"},
		{"bad size", "POST", "/workspaces", `{"limits":{"memory":"lots"}}`, 400, "invalid_limit"},
		{"over max", "POST", "/workspaces", `{"limits":{"pids":1000000}}`, 400, "limit_exceeds_max"},
		{"bad network", "POST", "/workspaces", `{"network":{"mode":"wide"}}`, 400, "invalid_network"},
		{"hosts without allowlist", "POST", "/workspaces", `{"network":{"mode":"none","allowed_hosts":["a.com"]}}`, 400, "invalid_network"},
		{"metadata host", "POST", "/workspaces", `{"network":{"mode":"allowlist","allowed_hosts":["169.254.169.254"]}}`, 400, "host_not_allowed"},
		{"bad env", "POST", "/workspaces", `{"env":{"A=B":"c"}}`, 400, "invalid_env"},
		{"no command", "POST", base + "/execute", `{}`, 400, "invalid_command"},
		{"both command and argv", "POST", base + "/execute", `{"command":"true","argv":["true"]}`, 400, "invalid_command"},
		{"cwd escape", "POST", base + "/execute", `{"command":"pwd","cwd":"../.."}`, 400, "path_escape"},
		{"timeout over max", "POST", base + "/execute", `{"command":"true","timeout":"100h"}`, 400, "limit_exceeds_max"},
		{"dotdot upload", "PUT", base + "/files/a/..%2F..%2F..%2Fetc%2Fpasswd", "x", 400, "path_escape"},
		{"dotdot download", "GET", base + "/files/..%2F..%2Fcorral.db", nil, 400, "path_escape"},
		{"dotdot archive", "GET", base + "/archive?path=../..", nil, 400, "path_escape"},
		{"bad mode", "PUT", base + "/files/x?mode=999", "x", 400, "invalid_mode"},
		{"bad limit param", "GET", "/workspaces?limit=0", nil, 400, "invalid_limit"},
		{"unknown workspace", "GET", "/workspaces/ws_nope", nil, 404, "not_found"},
		{"unknown route", "GET", "/nope", nil, 404, "not_found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.on(t).wantError(e.alice, c.method, c.path, c.body, c.status, c.code)
		})
	}

	// Symlinks that lead outside the workspace are refused both ways.
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "host.txt"), []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	res := e.execute(e.alice, ws.ID, map[string]any{"argv": []string{"ln", "-s", outside, "out"}})
	if res.ExitCode != 0 {
		t.Fatalf("ln: %+v", res)
	}
	e.wantError(e.alice, "GET", base+"/files/out/host.txt", nil, 400, "path_escape")
	e.wantError(e.alice, "PUT", base+"/files/out/planted.txt", "x", 400, "path_escape")
	if _, err := os.Stat(filepath.Join(outside, "planted.txt")); err == nil {
		t.Fatal("a file was written through a symlink outside the workspace")
	}

	// An upload over the workspace's limit is refused and leaves nothing.
	ws2 := e.createWorkspace(e.alice, map[string]any{"limits": map[string]any{"upload": "1KiB"}})
	e.wantError(e.alice, "PUT", "/workspaces/"+ws2.ID+"/files/big.bin", strings.Repeat("x", 2048), 413, "too_large")
	e.wantError(e.alice, "GET", "/workspaces/"+ws2.ID+"/files/big.bin", nil, 404, "not_found")

	// A refused create leaves no workspace behind.
	var list api.WorkspaceList
	e.json(e.alice, "GET", "/workspaces", nil, http.StatusOK, &list)
	if len(list.Workspaces) != 2 {
		t.Fatalf("after refused creates alice has %d workspaces", len(list.Workspaces))
	}
}

func TestPagination(t *testing.T) {
	e := newEnv(t, processBackend)
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, e.createWorkspace(e.alice, nil).ID)
	}
	e.createWorkspace(e.bob, nil)
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		var list api.WorkspaceList
		e.json(e.alice, "GET", "/workspaces?limit=2&after="+after, nil, http.StatusOK, &list)
		for _, w := range list.Workspaces {
			got = append(got, w.ID)
		}
		if list.NextAfter == "" {
			break
		}
		after = list.NextAfter
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("pages = %v, want %v", got, ids)
	}
	// A malformed cursor is refused, not answered with an empty page.
	for _, bad := range []string{"zzz", "ws_", "cv_01k80ok5mj4sb77la8ib", ids[0] + "x"} {
		e.wantError(e.alice, "GET", "/workspaces?after="+bad, nil, http.StatusBadRequest, "invalid_after")
	}
}

func TestExecSocketTTYSignalAndDisconnect(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	url := e.url + "/workspaces/" + ws.ID + "/exec"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// First-frame auth, TTY and resize.
	c := dialExec(t, ctx, url, "")
	send(t, ctx, c, map[string]any{"type": "auth", "key": e.alice})
	send(t, ctx, c, map[string]any{"type": "start", "argv": []string{"sh"}, "tty": true, "cols": 80, "rows": 24})
	send(t, ctx, c, map[string]any{"type": "stdin", "data": []byte("stty size\n")})
	readUntil(t, ctx, c, "24 80")
	send(t, ctx, c, map[string]any{"type": "resize", "cols": 100, "rows": 40})
	send(t, ctx, c, map[string]any{"type": "stdin", "data": []byte("stty size\n")})
	readUntil(t, ctx, c, "40 100")
	send(t, ctx, c, map[string]any{"type": "stdin", "data": []byte("exit\n")})
	readExit(t, ctx, c)

	// Signals.
	c = dialExec(t, ctx, url, e.alice)
	send(t, ctx, c, map[string]any{"type": "start", "command": "echo ready; sleep 60"})
	readUntil(t, ctx, c, "ready")
	send(t, ctx, c, map[string]any{"type": "signal", "signal": "TERM"})
	f := readExit(t, ctx, c)
	if f.Signal != "SIGTERM" || f.ExitCode != 128+15 {
		t.Fatalf("after SIGTERM: %+v", f.ExitResult)
	}

	// close_stdin ends cat.
	c = dialExec(t, ctx, url, e.alice)
	send(t, ctx, c, map[string]any{"type": "start", "argv": []string{"cat"}})
	send(t, ctx, c, map[string]any{"type": "stdin", "data": []byte("echoed")})
	readUntil(t, ctx, c, "echoed")
	send(t, ctx, c, map[string]any{"type": "close_stdin"})
	if f := readExit(t, ctx, c); f.ExitCode != 0 {
		t.Fatalf("cat after close_stdin: %+v", f.ExitResult)
	}

	// Closing the socket kills the command.
	c = dialExec(t, ctx, url, e.alice)
	send(t, ctx, c, map[string]any{"type": "start", "command": "echo $$ > pid; echo started; sleep 300"})
	readUntil(t, ctx, c, "started")
	c.Close(websocket.StatusNormalClosure, "bye")
	res := e.execute(e.alice, ws.ID, map[string]any{"command": `pid=$(cat pid); for i in $(seq 100); do kill -0 $pid 2>/dev/null || { echo gone; exit 0; }; sleep 0.1; done; echo alive`})
	if strings.TrimSpace(res.Stdout) != "gone" {
		t.Fatalf("command survived its socket: %+v", res)
	}
}

func TestOutputTruncated(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, map[string]any{"limits": map[string]any{"output": "1KiB"}})
	res := e.execute(e.alice, ws.ID, map[string]any{"command": "head -c 100000 /dev/zero | tr '\\0' x"})
	if !res.Truncated || len(res.Stdout) != 1024 || res.ExitCode != 0 {
		t.Fatalf("truncation: exit %d, truncated %v, %d bytes", res.ExitCode, res.Truncated, len(res.Stdout))
	}
}

// A restarted server lists the same workspaces with their files intact and
// runs commands in them.
func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	e := openEnv(t, processBackend, dir, "srv_restart")
	ws := e.createWorkspace(e.alice, nil)
	e.json(e.alice, "PUT", "/workspaces/"+ws.ID+"/files/keep.txt", "kept", http.StatusCreated, nil)
	alice := e.alice
	e.close()

	e2 := openEnv(t, processBackend, dir, "srv_restart")
	var got workspace.Workspace
	e2.json(alice, "GET", "/workspaces/"+ws.ID, nil, http.StatusOK, &got)
	if got.ID != ws.ID || got.CreatedAt.IsZero() {
		t.Fatalf("after restart: %+v", got)
	}
	res := e2.execute(alice, ws.ID, map[string]any{"command": "cat keep.txt"})
	if res.Stdout != "kept" {
		t.Fatalf("after restart: %+v", res)
	}
	var list api.WorkspaceList
	e2.json(alice, "GET", "/workspaces", nil, http.StatusOK, &list)
	if len(list.Workspaces) != 1 {
		t.Fatalf("after restart alice has %d workspaces", len(list.Workspaces))
	}
	// The exec record was kept.
	execs, err := e2.db.ListExecs(context.Background(), ws.ID, 10)
	if err != nil || len(execs) == 0 {
		t.Fatalf("exec records: %v %v", execs, err)
	}
}

// With Accept: application/x-ndjson, POST /workspaces streams its progress
// and ends with the outcome.
func TestCreateStreaming(t *testing.T) {
	e := newEnv(t, processBackend)
	lines := e.createStream(e.alice, `{"env":{"A":"1"}}`)
	last := lines[len(lines)-1]
	if last.Type != "created" || last.Workspace == nil || last.Workspace.State != "running" {
		t.Fatalf("last line = %+v", last)
	}
	e.json(e.alice, "GET", "/workspaces/"+last.Workspace.ID, nil, http.StatusOK, nil)

	lines = e.createStream(e.alice, `{"network":{"mode":"allowlist","allowed_hosts":["10.0.0.1"]}}`)
	last = lines[len(lines)-1]
	if last.Type != "error" || last.Error == nil || last.Error.Code != "host_not_allowed" {
		t.Fatalf("last line = %+v", last)
	}
}

func (e *env) createStream(key, body string) []api.CreateEvent {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.url+"/workspaces", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		e.t.Fatalf("streaming create: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var lines []api.CreateEvent
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var ev api.CreateEvent
		if err := dec.Decode(&ev); err != nil {
			e.t.Fatal(err)
		}
		lines = append(lines, ev)
	}
	if len(lines) == 0 {
		e.t.Fatal("no lines")
	}
	return lines
}
