package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/internal/testbin"
)

// running reports whether a process whose command line is exactly argv
// runs on this host (process runtime commands are host processes).
func running(argv ...string) bool {
	want := strings.Join(argv, "\x00") + "\x00"
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && string(b) == want {
			return true
		}
	}
	return false
}

func waitRunning(t *testing.T, argv ...string) {
	t.Helper()
	for i := 0; !running(argv...); i++ {
		if i == 1200 {
			t.Fatalf("%q never started", argv)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// On SIGTERM every WebSocket gets a close frame (1001, with a reason the
// client can act on) and a request still running at the drain deadline
// gets 503 shutting_down, not a dropped connection; then the server exits.
func TestShutdownClosesSocketsAndAnswersRunningRequests(t *testing.T) {
	bin := testbin.Corral(t)
	data := t.TempDir()
	key := "alice-key-0123456789abcdef"
	env := []string{"CORRAL_API_KEYS=alice:" + key}
	s := serve(t, bin, env, "--data-dir", data, "--drain-timeout", "1s")
	code, body := s.call(t, key, "POST", "/workspaces", `{}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	var ws struct{ ID string }
	json.Unmarshal(body, &ws)
	// The workspace outlives the server; delete it with the next one.
	t.Cleanup(func() {
		s := serve(t, bin, env, "--data-dir", data)
		if code, body := s.call(t, key, "DELETE", "/workspaces/"+ws.ID, ""); code != 204 {
			t.Errorf("delete: %d %s", code, body)
		}
		s.stop(t)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.url, "http")+"/workspaces/"+ws.ID+"/exec",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"start","argv":["sleep","1002"]}`)); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "sleep", "1002")

	answer := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/workspaces/"+ws.ID+"/execute",
			bytes.NewReader([]byte(`{"argv":["sleep","1001"]}`)))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("execute cut off by the shutdown: %v", err)
		}
		answer <- resp
	}()
	waitRunning(t, "sleep", "1001")

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var closeErr websocket.CloseError
	for {
		_, _, err := conn.Read(ctx)
		if err == nil {
			continue // started, output
		}
		if !errors.As(err, &closeErr) {
			t.Fatalf("exec socket ended with %v, want a close frame", err)
		}
		break
	}
	if closeErr.Code != websocket.StatusGoingAway || closeErr.Reason != "server shutting down, reconnect" {
		t.Errorf("close frame: %d %q, want 1001 with a reason", closeErr.Code, closeErr.Reason)
	}
	resp := <-answer
	if resp != nil {
		var e struct{ Error struct{ Code string } }
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 503 || e.Error.Code != "shutting_down" {
			t.Errorf("execute running at the drain deadline: %d %q, want 503 shutting_down", resp.StatusCode, e.Error.Code)
		}
	}
	if err := s.cmd.Wait(); err != nil {
		t.Errorf("corral serve exited with %v:\n%s", err, s.log)
	}
	if running("sleep", "1001") || running("sleep", "1002") {
		t.Errorf("commands of cut-off requests still run")
	}
}
