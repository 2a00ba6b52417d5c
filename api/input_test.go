package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/api"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/store"
)

// overflowing are JSON values no duration or size may take: out of range
// for the conversion (1e308, 9223372037 s wraps int64 nanoseconds),
// negative, fractional bytes, or not numbers at all.
var overflowingDurations = []string{`1e308`, `9223372037`, `9223372036.9`, `-1`, `"-5s"`, `"NaN"`, `"Inf"`, `"9999999999h"`, `true`}
var overflowingSizes = []string{`1e308`, `9.3e18`, `-1`, `1.5`, `"-1MiB"`, `"NaN"`, `"99999999TiB"`, `"1e400"`, `[]`}

// TestOverflowingLimitsAreRefused: every duration and size field of a
// create and an execute is range-checked before conversion, refused as 400
// invalid_limit naming the field, and a refused create stores nothing
// (issue 7: 1e308 wrapped to a negative duration, answered 500 and left an
// unreadable row behind).
func TestOverflowingLimitsAreRefused(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)

	check := func(t *testing.T, path, body, field string) {
		t.Helper()
		resp, data := e.on(t).do(e.alice, "POST", path, body)
		var eb api.ErrorBody
		_ = json.Unmarshal(data, &eb)
		if resp.StatusCode != http.StatusBadRequest || eb.Error.Code != "invalid_limit" {
			t.Fatalf("%s %s: %d %s, want 400 invalid_limit", path, body, resp.StatusCode, data)
		}
		if !strings.Contains(eb.Error.Message, field) {
			t.Fatalf("%s %s: message %q does not name %q", path, body, eb.Error.Message, field)
		}
	}
	for _, field := range []string{"timeout", "idle_timeout", "lifetime"} {
		for _, v := range overflowingDurations {
			t.Run("create "+field+"="+v, func(t *testing.T) {
				check(t, "/workspaces", `{"limits":{"`+field+`":`+v+`}}`, field)
			})
		}
	}
	for _, field := range []string{"memory", "disk", "upload", "output"} {
		for _, v := range overflowingSizes {
			t.Run("create "+field+"="+v, func(t *testing.T) {
				check(t, "/workspaces", `{"limits":{"`+field+`":`+v+`}}`, field)
			})
		}
	}
	for _, field := range []string{"pids", "nofile"} {
		for _, v := range []string{`1e308`, `9223372036854775808`, `1.5`, `"many"`} {
			t.Run("create "+field+"="+v, func(t *testing.T) {
				check(t, "/workspaces", `{"limits":{"`+field+`":`+v+`}}`, field)
			})
		}
	}
	for _, v := range overflowingDurations {
		t.Run("execute timeout="+v, func(t *testing.T) {
			check(t, "/workspaces/"+ws.ID+"/execute", `{"command":"sleep 6; echo survived","timeout":`+v+`}`, "timeout")
		})
	}
	// Representable but above the server's maximum.
	for _, c := range []struct{ path, body string }{
		{"/workspaces", `{"limits":{"timeout":1e6}}`},
		{"/workspaces", `{"limits":{"cpus":1e308}}`},
		{"/workspaces", `{"limits":{"memory":"1TiB"}}`},
		{"/workspaces", `{"limits":{"disk":"1TiB"}}`},
		{"/workspaces/" + ws.ID + "/execute", `{"command":"true","timeout":1e6}`},
	} {
		t.Run("over max "+c.body, func(t *testing.T) {
			e.on(t).wantError(e.alice, "POST", c.path, c.body, http.StatusBadRequest, "limit_exceeds_max")
		})
	}

	// Nothing was stored by any refused create, and the list still works.
	rows, err := e.db.AllWorkspaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].ID != ws.ID {
		t.Fatalf("after refused creates the store holds %d workspaces, want only %s", len(rows), ws.ID)
	}
	var list api.WorkspaceList
	e.json(e.alice, "GET", "/workspaces", nil, http.StatusOK, &list)
	if len(list.Workspaces) != 1 {
		t.Fatalf("list: %+v", list)
	}
}

// TestStrictJSON: duplicate keys and keys that differ only in case are
// refused at every level, for every JSON body.
func TestStrictJSON(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	exec := "/workspaces/" + ws.ID + "/execute"
	for _, c := range []struct{ name, path, body string }{
		{"duplicate key", exec, `{"command":"true","command":"false"}`},
		{"case variant", exec, `{"Command":"true"}`},
		{"case variant beside the key", exec, `{"command":"true","COMMAND":"false"}`},
		{"duplicate in env", exec, `{"command":"true","env":{"A":"1","A":"2"}}`},
		{"duplicate nested", "/workspaces", `{"limits":{"memory":"64MiB","memory":"8GiB"}}`},
		{"case variant nested", "/workspaces", `{"limits":{"Memory":"64MiB"}}`},
		{"case variant top", "/workspaces", `{"Network":{"mode":"none"}}`},
		{"duplicate top", "/workspaces", `{"image":"a","image":"b"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.on(t).wantError(e.alice, "POST", c.path, c.body, http.StatusBadRequest, "invalid_json")
		})
	}
	rows, err := e.db.AllWorkspaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("refused creates left %d workspaces", len(rows))
	}
	// Environment names that differ in case are different variables.
	res := e.execute(e.alice, ws.ID, map[string]any{"command": `echo "$a$A"`, "env": map[string]string{"a": "x", "A": "y"}})
	if res.ExitCode != 0 || res.Stdout != "xy\n" {
		t.Fatalf("env a and A: %+v", res)
	}
}

// TestUndecodableRowDoesNotBreakList: a stored workspace whose settings
// cannot be decoded is flagged at start-up, shown as errored and
// deletable; the owner's other workspaces are still listed.
func TestUndecodableRowDoesNotBreakList(t *testing.T) {
	dir := t.TempDir()
	serverID := "srv_test_" + store.NewID("x")[2:]
	e := openEnv(t, processBackend, dir, serverID)
	good := e.createWorkspace(e.alice, nil)
	ctx := context.Background()
	var alice store.User
	u, err := e.db.EnsureUser(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	alice = u
	now := time.Now().UTC()
	// What the server stored before range checks for {"timeout": 1e308}.
	bad := store.Workspace{ID: store.NewID("ws"), UserID: alice.ID, Runtime: "process", State: "running",
		Spec:      []byte(`{"policy":{"limits":{"timeout":"-2562047h47m16.854775808s"},"network":{"mode":"none"}}}`),
		CreatedAt: now, UpdatedAt: now, LastUsedAt: now}
	if err := e.db.CreateWorkspace(ctx, bad); err != nil {
		t.Fatal(err)
	}
	var list api.WorkspaceList
	e.json(e.alice, "GET", "/workspaces", nil, http.StatusOK, &list)
	if len(list.Workspaces) != 2 {
		t.Fatalf("list with a bad row: %+v", list)
	}

	// A restart flags it in the store.
	e.close()
	e = openEnv(t, processBackend, dir, serverID)
	row, err := e.db.GetWorkspace(ctx, alice.ID, bad.ID)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != "error" || !strings.Contains(row.Error, "cannot be read") {
		t.Fatalf("after restart the bad row is %q %q, want error with a reason", row.State, row.Error)
	}
	list = api.WorkspaceList{}
	e.json(e.alice, "GET", "/workspaces", nil, http.StatusOK, &list)
	states := map[string]string{}
	for _, w := range list.Workspaces {
		states[w.ID] = w.State
	}
	if states[good.ID] != "running" && states[good.ID] != "stopped" || states[bad.ID] != "error" {
		t.Fatalf("list after restart: %+v", list)
	}
	e.json(e.alice, "GET", "/workspaces/"+bad.ID, nil, http.StatusOK, nil)
	e.wantError(e.alice, "POST", "/workspaces/"+bad.ID+"/execute", `{"command":"true"}`, http.StatusUnprocessableEntity, "workspace_corrupt")
	e.json(e.alice, "DELETE", "/workspaces/"+bad.ID, nil, http.StatusNoContent, nil)
	e.wantError(e.alice, "GET", "/workspaces/"+bad.ID, nil, http.StatusNotFound, "not_found")
}

// TestBodyIdleDeadline: a client that stops sending its body gets 408
// body_timeout instead of holding the handler; one that keeps sending
// slowly is served.
func TestBodyIdleDeadline(t *testing.T) {
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.Discard})
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	srv := &http.Server{Handler: api.New(api.Config{DB: e.db, Workspaces: e.mgr, Logger: log, BodyIdleTimeout: 300 * time.Millisecond}).Handler()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	// send declares a body of length bytes and sends parts of it, pause
	// apart.
	send := func(t *testing.T, path string, length int, parts []string, pause time.Duration) (int, string) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		head := "POST " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + e.alice +
			"\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(length) + "\r\n\r\n"
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		for i, p := range parts {
			if i > 0 {
				time.Sleep(pause)
			}
			if _, err := io.WriteString(c, p); err != nil {
				t.Fatal(err)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	exec := "/workspaces/" + ws.ID + "/execute"
	t.Run("stalled", func(t *testing.T) {
		// Half a body, then nothing: the declared length never arrives.
		code, body := send(t, exec, 100, []string{`{"command":`}, 0)
		if code != http.StatusRequestTimeout || !strings.Contains(body, "body_timeout") {
			t.Fatalf("stalled body: %d %s", code, body)
		}
	})
	t.Run("slow but steady", func(t *testing.T) {
		// Each piece comes well within the idle deadline; in all the
		// body takes longer than it.
		parts := []string{`{"comm`, `and":`, `"echo `, `ok"}`}
		code, body := send(t, exec, len(strings.Join(parts, "")), parts, 100*time.Millisecond)
		if code != http.StatusOK || !strings.Contains(body, `"stdout":"ok\n"`) {
			t.Fatalf("steady body: %d %s", code, body)
		}
	})
}

// TestDefaultDiskCap: where the runtime can enforce a disk limit, a
// workspace that asks for none gets the 10 GiB default, and its file
// system really is that size; where it cannot, the default is dropped
// rather than refusing every create.
func TestDefaultDiskCap(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	if !e.rt.Capabilities().Policy.Disk {
		if ws.Limits.Disk != 0 {
			t.Fatalf("runtime cannot enforce disk, yet the workspace has disk %s", ws.Limits.Disk)
		}
		return
	}
	if ws.Limits.Disk != policy.DefaultDisk {
		t.Fatalf("default disk %s, want %s", ws.Limits.Disk, policy.DefaultDisk)
	}
	res := e.execute(e.alice, ws.ID, map[string]any{"command": "df -Pk . | tail -1"})
	f := strings.Fields(res.Stdout)
	if res.ExitCode != 0 || len(f) < 2 {
		t.Fatalf("df: %+v", res)
	}
	kib, err := strconv.ParseInt(f[1], 10, 64)
	t.Logf("workspace file system: %s KiB", f[1])
	if err != nil || kib <= 0 || kib > int64(policy.DefaultDisk)/1024 {
		t.Fatalf("the workspace's file system has %s KiB, want at most %d", f[1], int64(policy.DefaultDisk)/1024)
	}
}
