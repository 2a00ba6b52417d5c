package main_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/corralhq/corral/internal/testbin"
)

// TestLoad runs `corral load` for a few seconds with three users against a
// real server (process runtime, the scripted LLM) and checks that every
// operation ran, none failed, and nothing is left: no workspace, no
// process, mount or cgroup. `make load` runs it longer through
// CORRAL_LOAD_DURATION, CORRAL_LOAD_USERS and CORRAL_LOAD_REPORT (the file
// the text report is copied to, next to it the JSON one).
func TestLoad(t *testing.T) {
	duration, users := env("CORRAL_LOAD_DURATION", "3s"), env("CORRAL_LOAD_USERS", "3")
	bin := testbin.Corral(t)
	data := t.TempDir()
	llm := newScriptedLLM(t, "echo from the agent")
	keys := []string{"load-user-1-0123456789abcdef", "load-user-2-0123456789abcdef"}
	env := append(llm.env(), "CORRAL_API_KEYS=u1:"+keys[0]+",u2:"+keys[1])
	s := serve(t, bin, env, "--data-dir", data)

	out := filepath.Join(t.TempDir(), "load.json")
	cmd := exec.Command(bin, "load", "--url", s.url, "--keys", strings.Join(keys, ","), "--users", users,
		"--duration", duration, "--server-pid", strconv.Itoa(s.cmd.Process.Pid), "--json", out, "--sample", "500ms")
	text, err := cmd.CombinedOutput()
	t.Logf("corral load:\n%s", text)
	if err != nil {
		t.Fatalf("corral load: %v\nserver log:\n%s", err, s.log)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if report := os.Getenv("CORRAL_LOAD_REPORT"); report != "" {
		if err := os.WriteFile(report, text, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(strings.TrimSuffix(report, filepath.Ext(report))+".json", b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var rep struct {
		Rounds  int
		Ops     map[string]struct{ Count int }
		Errors  map[string]int
		Skipped []string
		Server  []struct {
			RSS int64 `json:"rss_bytes"`
			FDs int   `json:"fds"`
		}
		Leftover int `json:"leftover_workspaces"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Errors) > 0 || rep.Leftover > 0 || len(rep.Skipped) > 0 || rep.Rounds == 0 {
		t.Fatalf("load report: %s", b)
	}
	for _, op := range []string{"create", "execute", "upload", "download", "ws_exec", "conversation", "delete"} {
		if rep.Ops[op].Count == 0 {
			t.Errorf("operation %s never ran: %s", op, b)
		}
	}
	if len(rep.Server) == 0 || rep.Server[0].RSS == 0 || rep.Server[0].FDs == 0 {
		t.Errorf("no server samples: %s", b)
	}
	for _, k := range keys {
		code, body := s.call(t, k, "GET", "/workspaces", "")
		if code != 200 || strings.Contains(string(body), "ws_") {
			t.Fatalf("workspaces after load: %d %s", code, body)
		}
	}
	s.stop(t)
	assertNothingLeft(t, data, nil)
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
