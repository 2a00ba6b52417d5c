package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corralhq/corral/internal/testbin"
)

// server is a running `corral serve` process.
type server struct {
	cmd *exec.Cmd
	url string
	log *logBuffer
}

// logBuffer is the server's stderr, written by a reader goroutine.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) WriteString(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var listening = regexp.MustCompile(`listening: url=(http://\S+)`)

// serve starts the real binary and waits until it listens.
func serve(t *testing.T, bin string, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, log: &logBuffer{}}
	t.Cleanup(func() { s.stop(t) })
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.log.WriteString(line + "\n")
			if m := listening.FindStringSubmatch(line); m != nil {
				urls <- m[1]
			}
		}
		close(urls)
	}()
	select {
	case u, ok := <-urls:
		if !ok {
			cmd.Wait()
			t.Fatalf("corral serve exited before listening:\n%s", s.log)
		}
		s.url = u
	case <-time.After(60 * time.Second):
		t.Fatalf("corral serve did not listen:\n%s", s.log)
	}
	return s
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop(t *testing.T) {
	if s.cmd.ProcessState != nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("corral serve exited with %v:\n%s", err, s.log)
		}
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		t.Errorf("corral serve did not stop on SIGTERM")
	}
}

func (s *server) call(t *testing.T, key, method, path, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// deleteWorkspacesAtCleanup deletes every workspace of key's user when the
// test ends, before the server stops (cleanups run last-registered first):
// a stopped server leaves its sandboxes running for the next start to
// adopt, and their disk mounts would keep t.TempDir from being removed.
func (s *server) deleteWorkspacesAtCleanup(t *testing.T, key string) {
	t.Cleanup(func() {
		code, body := s.call(t, key, http.MethodGet, "/workspaces?limit=100", "")
		if code != http.StatusOK {
			t.Errorf("list workspaces at cleanup: %d %s", code, body)
			return
		}
		var page struct {
			Workspaces []struct {
				ID string `json:"id"`
			} `json:"workspaces"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Errorf("list workspaces at cleanup: %v: %s", err, body)
			return
		}
		for _, w := range page.Workspaces {
			if code, body := s.call(t, key, http.MethodDelete, "/workspaces/"+w.ID, ""); code != http.StatusNoContent && code != http.StatusNotFound {
				t.Errorf("delete %s at cleanup: %d %s", w.ID, code, body)
			}
		}
	})
}

// The binary end to end: keys made by `corral keys` and CORRAL_API_KEYS
// work, keys never reach the log, and a restarted server keeps its
// workspaces and their files.
func TestServeKeysAndRestart(t *testing.T) {
	bin := testbin.Corral(t)
	data := t.TempDir()

	out, err := exec.Command(bin, "keys", "create", "--user", "alice", "--data-dir", data).Output()
	if err != nil {
		t.Fatalf("keys create: %v", err)
	}
	alice := strings.TrimSpace(string(out))
	if !strings.HasPrefix(alice, "crl_") {
		t.Fatalf("keys create printed %q", out)
	}
	bobKey := "bob-key-0123456789abcdef"
	env := []string{"CORRAL_API_KEYS=bob:" + bobKey}

	s := serve(t, bin, env, "--data-dir", data)
	code, body := s.call(t, alice, "POST", "/workspaces", `{}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	var ws struct{ ID string }
	json.Unmarshal(body, &ws)
	if code, body = s.call(t, alice, "PUT", "/workspaces/"+ws.ID+"/files/kept.txt", "kept"); code != 201 {
		t.Fatalf("put: %d %s", code, body)
	}
	// Commands see nothing of the data directory but the way to their own
	// files (no database, keys, proxy sockets), and as root they run as an
	// unprivileged uid.
	code, body = s.call(t, alice, "POST", "/workspaces/"+ws.ID+"/execute",
		`{"command":"ls -A `+data+`; cat `+data+`/corral.db >/dev/null 2>&1 && echo READ; echo uid=$(id -u)"}`)
	var res struct{ Stdout string }
	json.Unmarshal(body, &res)
	if code != 200 || strings.Contains(res.Stdout, "READ") || strings.Contains(res.Stdout, "corral.db") ||
		strings.Contains(res.Stdout, "server-id") || strings.Contains(res.Stdout, "proxy") {
		t.Fatalf("data dir visible to a command: %d %s", code, body)
	}
	if os.Geteuid() == 0 && strings.Contains(res.Stdout, "uid=0\n") {
		t.Fatalf("commands run as root: %q", res.Stdout)
	}
	if code, _ = s.call(t, bobKey, "GET", "/workspaces/"+ws.ID, ""); code != 404 {
		t.Fatalf("bob sees alice's workspace: %d", code)
	}
	if code, _ = s.call(t, "wrong-key-wrong-key", "GET", "/workspaces", ""); code != 401 {
		t.Fatalf("wrong key: %d", code)
	}
	s.stop(t)
	for _, k := range []string{alice, bobKey} {
		if strings.Contains(s.log.String(), k) {
			t.Fatalf("a key is in the server log:\n%s", s.log)
		}
	}

	s2 := serve(t, bin, env, "--data-dir", data)
	code, body = s2.call(t, alice, "POST", "/workspaces/"+ws.ID+"/execute", `{"command":"cat kept.txt"}`)
	if code != 200 || !strings.Contains(string(body), `"stdout":"kept"`) {
		t.Fatalf("after restart: %d %s", code, body)
	}
	code, body = s2.call(t, alice, "GET", "/workspaces", "")
	if code != 200 || !strings.Contains(string(body), ws.ID) {
		t.Fatalf("list after restart: %d %s", code, body)
	}

	// Deleted while alice's key surely works: the revocation below may
	// take it, and a workspace left behind outlives the test (its
	// supervisor, and the mount of its disk image).
	if code, _ = s2.call(t, alice, "DELETE", "/workspaces/"+ws.ID, ""); code != 204 {
		t.Fatalf("delete: %d", code)
	}

	// keys list shows both users' keys, never a secret; revoke works at once.
	out, err = exec.Command(bin, "keys", "list", "--data-dir", data).Output()
	if err != nil || !strings.Contains(string(out), "alice") || !strings.Contains(string(out), "bob") || strings.Contains(string(out), alice) {
		t.Fatalf("keys list: %v\n%s", err, out)
	}
	id := strings.Fields(strings.Split(string(out), "\n")[1])[0]
	if err := exec.Command(bin, "keys", "revoke", id, "--data-dir", data).Run(); err != nil {
		t.Fatalf("keys revoke: %v", err)
	}
	revokedAlice := strings.Contains(strings.Split(string(out), "\n")[1], "alice")
	key := bobKey
	if revokedAlice {
		key = alice
	}
	if code, _ = s2.call(t, key, "GET", "/workspaces", ""); code != 401 {
		t.Fatalf("revoked key still works: %d", code)
	}
}

func TestUnknownRuntimeListsValidOnes(t *testing.T) {
	bin := testbin.Corral(t)
	out, err := exec.Command(bin, "serve", "--runtime", "lxc", "--data-dir", t.TempDir(), "--addr", "127.0.0.1:0").CombinedOutput()
	if err == nil {
		t.Fatal("serve with an unknown runtime succeeded")
	}
	for _, want := range []string{`unknown runtime "lxc"`, "docker", "podman", "process"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestBootstrapAdminPrintsKeyOnce(t *testing.T) {
	bin := testbin.Corral(t)
	data := t.TempDir()
	s := serve(t, bin, nil, "--data-dir", data, "--bootstrap-admin")
	waitFor(t, s, "API key for user admin")
	m := regexp.MustCompile(`(crl_\S+)`).FindStringSubmatch(s.log.String())
	if m == nil {
		t.Fatalf("no key printed:\n%s", s.log)
	}
	if code, body := s.call(t, m[1], "GET", "/workspaces", ""); code != 200 {
		t.Fatalf("admin key: %d %s", code, body)
	}
	s.stop(t)
	s2 := serve(t, bin, nil, "--data-dir", data, "--bootstrap-admin")
	waitFor(t, s2, "already has a key")
	if strings.Contains(s2.log.String(), "crl_") {
		t.Fatalf("second start printed a key again:\n%s", s2.log)
	}
}

func waitFor(t *testing.T, s *server, text string) {
	t.Helper()
	for i := 0; i < 200 && !strings.Contains(s.log.String(), text); i++ {
		time.Sleep(25 * time.Millisecond)
	}
	if !strings.Contains(s.log.String(), text) {
		t.Fatalf("log lacks %q:\n%s", text, s.log)
	}
}
