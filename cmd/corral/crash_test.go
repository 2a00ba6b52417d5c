package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corralhq/corral/internal/testbin"
)

// The crash tests kill -9 a real `corral serve` (process runtime) in the
// middle of something, start it again on the same data directory, and
// check what a user and the host see: the workspace usable or cleanly
// gone, conversation events gap-free and never duplicated, and, once the
// workspace is deleted and the server stopped, no process, mount or cgroup
// of it left.

const crashKey = "crash-user-0123456789abcdef"

// crashServer starts the binary with the crash user's key and the extra
// environment.
func crashServer(t *testing.T, bin, data string, env ...string) *server {
	t.Helper()
	return serve(t, bin, append(env, "CORRAL_API_KEYS=crash:"+crashKey), "--data-dir", data)
}

// kill sends SIGKILL and reaps the process, so that nothing of the server
// but what it left behind remains.
func (s *server) kill(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = s.cmd.Wait()
}

// waitForProcess waits until a process with arg in its command line runs:
// the point a test kills the server at. It fails after three minutes.
func waitForProcess(t *testing.T, arg string) {
	t.Helper()
	for i := 0; i < 3600; i++ {
		if len(processesWith(arg)) > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no process %q started", arg)
}

// background sends a request whose answer the test does not wait for (the
// server dies under it).
func background(s *server, method, path, body string) {
	go func() {
		req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+crashKey)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if resp, err := http.DefaultClient.Do(req.WithContext(ctx)); err == nil {
			resp.Body.Close()
		}
	}()
}

func createWorkspace(t *testing.T, s *server) string {
	t.Helper()
	code, body := s.call(t, crashKey, "POST", "/workspaces", `{}`)
	var ws struct{ ID string }
	if code != 201 || json.Unmarshal(body, &ws) != nil {
		t.Fatalf("create: %d %s", code, body)
	}
	return ws.ID
}

// deleteAndCheck deletes the workspace (if it still exists), stops the
// server and checks that nothing of either is left.
func deleteAndCheck(t *testing.T, s *server, data, id string) {
	t.Helper()
	if code, body := s.call(t, crashKey, "DELETE", "/workspaces/"+id, ""); code != 204 && code != 404 {
		t.Fatalf("delete after restart: %d %s", code, body)
	}
	if code, body := s.call(t, crashKey, "GET", "/workspaces", ""); code != 200 || strings.Contains(string(body), id) {
		t.Fatalf("list after delete: %d %s", code, body)
	}
	s.stop(t)
	assertNothingLeft(t, data, []string{id})
}

// requireRoot skips where the process runtime cannot make namespaces and
// cgroups for its sandboxes (CI runs as root).
func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the crash tests run the process runtime as root, as CI does")
	}
}

// Killed while a command runs: after the restart the workspace answers,
// runs commands and keeps its files; the killed command's supervisor is
// adopted, and deleting the workspace leaves nothing.
func TestCrashMidExecute(t *testing.T) {
	requireRoot(t)
	bin := testbin.Corral(t)
	data := t.TempDir()
	s := crashServer(t, bin, data)
	id := createWorkspace(t, s)
	if code, body := s.call(t, crashKey, "PUT", "/workspaces/"+id+"/files/kept.txt", "kept"); code != 201 {
		t.Fatalf("put: %d %s", code, body)
	}
	marker := fmt.Sprintf("%d", 3000+os.Getpid()%1000) // a sleep this test owns
	background(s, "POST", "/workspaces/"+id+"/execute", `{"command":"sleep `+marker+`.5"}`)
	waitForProcess(t, marker+".5")
	s.kill(t)

	s2 := crashServer(t, bin, data)
	code, body := s2.call(t, crashKey, "POST", "/workspaces/"+id+"/execute", `{"command":"cat kept.txt"}`)
	if code != 200 || !strings.Contains(string(body), `"stdout":"kept"`) {
		t.Fatalf("execute after the crash: %d %s", code, body)
	}
	// The supervisor lives through the crash and is adopted; seeing it
	// here also shows that the leftover check below can see one.
	if len(processesWith(data)) == 0 {
		t.Fatal("no supervisor of the workspace runs after the restart")
	}
	deleteAndCheck(t, s2, data, id)
	if p := processesWith(marker + ".5"); len(p) > 0 {
		t.Fatalf("the killed execute's command outlived its workspace: %v", p)
	}
}

// Killed while a workspace is being deleted: after the restart it is gone,
// or still listed and deletable; either way nothing is left once deleted.
func TestCrashMidDelete(t *testing.T) {
	requireRoot(t)
	bin := testbin.Corral(t)
	data := t.TempDir()
	s := crashServer(t, bin, data)
	id := createWorkspace(t, s)
	marker := fmt.Sprintf("%d", 4000+os.Getpid()%1000)
	// A running command gives the delete something to stop.
	background(s, "POST", "/workspaces/"+id+"/execute", `{"command":"sleep `+marker+`.5"}`)
	waitForProcess(t, marker+".5")
	background(s, "DELETE", "/workspaces/"+id, "")
	// The kill lands wherever the delete is by then; what follows must
	// hold at every such point.
	for i := 0; i < 200 && len(processesWith(marker+".5")) > 0; i++ {
		time.Sleep(time.Millisecond)
	}
	s.kill(t)

	s2 := crashServer(t, bin, data)
	code, body := s2.call(t, crashKey, "GET", "/workspaces/"+id, "")
	if code != 200 && code != 404 {
		t.Fatalf("workspace after a crash mid-delete: %d %s", code, body)
	}
	deleteAndCheck(t, s2, data, id)
	if p := processesWith(marker + ".5"); len(p) > 0 {
		t.Fatalf("a command of the deleted workspace runs on: %v", p)
	}
}

// Killed while the agent runs a command: after the restart the
// conversation reads as interrupted, its events numbered 1..n with no gap
// or repeat; a new message runs the agent again to the end, still gap-free.
func TestCrashMidConversation(t *testing.T) {
	requireRoot(t)
	bin := testbin.Corral(t)
	data := t.TempDir()
	marker := fmt.Sprintf("%d", 5000+os.Getpid()%1000)
	llm := newScriptedLLM(t, "sleep "+marker+".5")
	s := crashServer(t, bin, data, llm.env()...)
	id := createWorkspace(t, s)
	code, body := s.call(t, crashKey, "POST", "/conversations", `{"workspace_id":"`+id+`"}`)
	var cv struct{ ID string }
	if code != 201 || json.Unmarshal(body, &cv) != nil {
		t.Fatalf("create conversation: %d %s", code, body)
	}
	if code, body := s.call(t, crashKey, "POST", "/conversations/"+cv.ID+"/messages", `{"content":"sleep"}`); code != 202 {
		t.Fatalf("message: %d %s", code, body)
	}
	waitForProcess(t, marker+".5")
	s.kill(t)

	llm.setCommand("echo resumed")
	s2 := crashServer(t, bin, data, llm.env()...)
	evs := events(t, s2.url, cv.ID)
	if last := lastState(evs); last != "interrupted" {
		t.Fatalf("state after the crash %q, want interrupted; events %s", last, evsText(evs))
	}
	if code, body := s2.call(t, crashKey, "POST", "/conversations/"+cv.ID+"/messages", `{"content":"again"}`); code != 202 {
		t.Fatalf("message after restart: %d %s", code, body)
	}
	for i := 0; i < 3600; i++ {
		if evs = events(t, s2.url, cv.ID); lastState(evs) == "finished" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lastState(evs) != "finished" {
		t.Fatalf("conversation after restart did not finish: %s", evsText(evs))
	}
	deleteAndCheck(t, s2, data, id)
	if p := processesWith(marker + ".5"); len(p) > 0 {
		t.Fatalf("the agent's killed command runs on: %v", p)
	}
}

type event struct {
	Seq     int64           `json:"seq"`
	ID      string          `json:"id"`
	Kind    string          `json:"kind"`
	Payload json.RawMessage `json:"payload"`
}

// events reads all of a conversation's events page by page and fails
// unless their seqs are 1..n and their IDs distinct.
func events(t *testing.T, url, id string) []event {
	t.Helper()
	var all []event
	after := int64(0)
	for {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/conversations/%s/events?after=%d&limit=1000", url, id, after), nil)
		req.Header.Set("Authorization", "Bearer "+crashKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		var page struct {
			Events    []event `json:"events"`
			NextAfter int64   `json:"next_after"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("events: %d %v", resp.StatusCode, err)
		}
		all = append(all, page.Events...)
		if len(page.Events) == 0 {
			break
		}
		after = page.NextAfter
	}
	ids := map[string]bool{}
	for i, e := range all {
		if e.Seq != int64(i+1) || ids[e.ID] {
			t.Fatalf("events not gap-free and unique at %d: %s", i, evsText(all))
		}
		ids[e.ID] = true
	}
	return all
}

func lastState(evs []event) string {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Kind == "state" {
			var p struct{ State string }
			_ = json.Unmarshal(evs[i].Payload, &p)
			return p.State
		}
	}
	return ""
}

func evsText(evs []event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %d %s %s", e.Seq, e.Kind, e.Payload)
	}
	return b.String()
}

// Killed while a file is being uploaded: after the restart the file is
// absent (never half written) and nothing else of the upload (a temporary
// file) is in the workspace.

func TestCrashMidUpload(t *testing.T) {
	requireRoot(t)
	bin := testbin.Corral(t)
	data := t.TempDir()
	s := crashServer(t, bin, data)
	id := createWorkspace(t, s)

	const size, sent = 8 << 20, 2 << 20
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("PUT", s.url+"/workspaces/"+id+"/files/big.bin", pr)
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+crashKey)
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	read0 := readChars(t, s.cmd.Process.Pid)
	if _, err := pw.Write(make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	// Kill once the server has read what was sent: the upload is under
	// way, with 6 MiB still to come.
	for i := 0; i < 1200 && readChars(t, s.cmd.Process.Pid)-read0 < sent; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	s.kill(t)
	pw.CloseWithError(errors.New("server killed"))

	s2 := crashServer(t, bin, data)
	if code, body := s2.call(t, crashKey, "GET", "/workspaces/"+id+"/files/big.bin", ""); code != 404 {
		t.Fatalf("a half-uploaded file is visible after the crash: %d, %d bytes", code, len(body))
	}
	code, body := s2.call(t, crashKey, "GET", "/workspaces/"+id+"/files", "")
	var list struct{ Entries []struct{ Name string } }
	if code != 200 || json.Unmarshal(body, &list) != nil || len(list.Entries) != 0 {
		t.Fatalf("workspace files after a crash mid-upload: %d %s", code, body)
	}
	deleteAndCheck(t, s2, data, id)
}

// readChars is the bytes process pid has read so far (rchar: files and
// sockets alike).
func readChars(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("no rchar in /proc/PID/io")
	return 0
}
