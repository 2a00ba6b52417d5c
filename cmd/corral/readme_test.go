package main_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/internal/testserver"
)

var shBlock = regexp.MustCompile("(?s)```sh\n(.*?)```")

// readmeCurlScript is every ```sh block of the README that runs curl (or
// sets $API for them),
// in order, except host set-up blocks (sudo), pointed at url with key.
func readmeCurlScript(t *testing.T, url, key string) string {
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, m := range shBlock.FindAllStringSubmatch(string(b), -1) {
		if (strings.Contains(m[1], "curl ") || strings.HasPrefix(m[1], "API=")) && !strings.Contains(m[1], "sudo ") {
			blocks = append(blocks, m[1])
		}
	}
	if len(blocks) < 5 {
		t.Fatalf("found only %d curl blocks in the README", len(blocks))
	}
	script := strings.Join(blocks, "\n")
	script = strings.ReplaceAll(script, "http://127.0.0.1:8080", url)
	script = strings.ReplaceAll(script, "crl_…", key)
	// Stop at the first command that fails or answers an HTTP error.
	return "set -euo pipefail\ncurl() { command curl --fail-with-body \"$@\"; }\nset -x\n" + script
}

// Every curl example of the README runs as written, in order, against a
// real `corral serve` (process runtime) with a scripted model: the only
// changes are the server's address and a real key.
func TestReadmeCurlExamples(t *testing.T) {
	for _, tool := range []string{"curl", "jq", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CORRAL_REQUIRE_ENGINES") != "" {
				t.Fatalf("%s is required (.ci/setup-docker.sh installs it): %v", tool, err)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	bin := testbin.Corral(t)
	data := t.TempDir()
	out, err := exec.Command(bin, "keys", "create", "--user", "alice", "--data-dir", data).Output()
	if err != nil {
		t.Fatalf("keys create: %v", err)
	}
	key := strings.TrimSpace(string(out))
	llm := testserver.NewLLM(t)
	llm.Say(testserver.Call("c1", "write_file", map[string]string{"path": "hello.py", "content": "print('hi')\n"}),
		testserver.Call("c2", "run_command", map[string]string{"command": "cat hello.py"}),
		testserver.Reply("It prints hi."))
	s := serve(t, bin, []string{"CORRAL_LLM_BASE_URL=" + llm.URL + "/v1", "CORRAL_LLM_MODEL=m"}, "--data-dir", data, "--runtime", "process")
	s.deleteWorkspacesAtCleanup(t, key)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", readmeCurlScript(t, s.url, key))
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+cmd.Dir)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's curl examples failed: %v\n%s", err, outb)
	}
}
