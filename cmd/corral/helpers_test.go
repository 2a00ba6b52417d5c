package main_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/corralhq/corral/conversation/openai"
)

// scriptedLLM is a local server speaking the chat-completions protocol,
// the one stand-in the tests use. Its reply depends only on the request:
// after a user message it calls run_command with command; after a tool
// result it finishes. It keeps no state per conversation, so any number of
// conversations can use it at once.
type scriptedLLM struct {
	srv     *httptest.Server
	mu      sync.Mutex
	command string
}

func newScriptedLLM(t *testing.T, command string) *scriptedLLM {
	l := &scriptedLLM{command: command}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req openai.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !strings.HasSuffix(r.URL.Path, "/chat/completions") || len(req.Messages) == 0 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		l.mu.Lock()
		cmd := l.command
		l.mu.Unlock()
		call := func(name string, args any) openai.Message {
			b, _ := json.Marshal(args)
			return openai.Message{Role: "assistant", ToolCalls: []openai.ToolCall{{ID: "c1", Type: "function",
				Function: openai.FunctionCall{Name: name, Arguments: openai.Arguments(b)}}}}
		}
		m := call("run_command", map[string]string{"command": cmd})
		if req.Messages[len(req.Messages)-1].Role == "tool" {
			m = call("finish", map[string]string{"summary": "done"})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(openai.Response{ID: "x", Choices: []openai.Choice{{Message: m, FinishReason: "stop"}}})
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *scriptedLLM) setCommand(c string) {
	l.mu.Lock()
	l.command = c
	l.mu.Unlock()
}

// env is what `corral serve` needs to use the scripted LLM.
func (l *scriptedLLM) env() []string {
	return []string{"CORRAL_LLM_BASE_URL=" + l.srv.URL + "/v1", "CORRAL_LLM_MODEL=scripted", "CORRAL_LLM_ALLOW_PRIVATE=true"}
}

// processesWith lists the PIDs of processes whose command line contains s
// as a whole argument or within one (other than this test's own).
func processesWith(s string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || e.Name() == itoa(os.Getpid()) {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			if bytes.Contains(arg, []byte(s)) {
				pids = append(pids, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
				break
			}
		}
	}
	return pids
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// assertNothingLeft fails if a process, mount or cgroup of the server on
// dataDir outlives it, or of a workspace in ids.
func assertNothingLeft(t *testing.T, dataDir string, ids []string) {
	t.Helper()
	if p := processesWith(dataDir); len(p) > 0 {
		t.Errorf("processes of the server's data dir left:\n%s", strings.Join(p, "\n"))
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, dataDir) {
			t.Errorf("mount left: %s", line)
		}
	}
	for _, id := range ids {
		if id == "" {
			continue
		}
		filepath.WalkDir("/sys/fs/cgroup", func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, "/sys/fs/cgroup"), "/") > 4 {
				return filepath.SkipDir
			}
			if strings.Contains(d.Name(), id) {
				t.Errorf("cgroup left: %s", p)
				return filepath.SkipDir
			}
			return nil
		})
	}
}
