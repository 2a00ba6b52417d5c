package main_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/internal/testserver"
)

// cli runs the corral binary as a user of server s would.
type cli struct {
	t   *testing.T
	bin string
	env []string
}

func newCLI(t *testing.T, s *testserver.Server) *cli {
	home := t.TempDir()
	return &cli{t: t, bin: testbin.Corral(t), env: []string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"CORRAL_URL=" + s.URL, "CORRAL_API_KEY=" + s.Key, "TERM=xterm"}}
}

func (c *cli) cmd(stdin io.Reader, args ...string) *exec.Cmd {
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	cmd.Stdin = stdin
	return cmd
}

// run runs corral and returns stdout, stderr and the exit status.
func (c *cli) run(stdin io.Reader, args ...string) (string, string, int) {
	c.t.Helper()
	var out, errOut bytes.Buffer
	cmd := c.cmd(stdin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0
	case errors.As(err, &ee):
		return out.String(), errOut.String(), ee.ExitCode()
	}
	c.t.Fatalf("corral %v: %v", args, err)
	return "", "", -1
}

// ok runs corral and fails unless it succeeds.
func (c *cli) ok(stdin io.Reader, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(stdin, args...)
	if code != 0 {
		c.t.Fatalf("corral %v: status %d\n%s%s", args, code, out, errOut)
	}
	return out
}

func TestCLILogin(t *testing.T) {
	s := testserver.Start(t)
	c := newCLI(t, s)
	// Without the environment, the stored login is used.
	c.env = []string{c.env[0], c.env[1], "TERM=xterm"}
	if _, errOut, code := c.run(nil, "ws", "ls"); code != 1 || !strings.Contains(errOut, "corral login") {
		t.Fatalf("ws ls before login: %d %s", code, errOut)
	}
	if _, errOut, code := c.run(strings.NewReader("crl_wrong\n"), "login", s.URL); code != 1 || !strings.Contains(errOut, "unauthenticated") {
		t.Fatalf("login with a bad key: %d %s", code, errOut)
	}
	c.ok(strings.NewReader(s.Key+"\n"), "login", s.URL)
	home := strings.TrimPrefix(c.env[1], "XDG_CONFIG_HOME=")
	fi, err := os.Stat(filepath.Join(home, "corral", "config.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v, %v", fi, err)
	}
	if out := c.ok(nil, "ws", "ls"); !strings.HasPrefix(out, "ID") {
		t.Fatalf("ws ls after login: %q", out)
	}
	// The environment overrides the stored key.
	c.env = append(c.env, "CORRAL_API_KEY=crl_other")
	if _, errOut, code := c.run(nil, "ws", "ls"); code != 1 || !strings.Contains(errOut, "corral: unauthenticated:") {
		t.Fatalf("env override: %d %s", code, errOut)
	}
}

func TestCLIWorkspacesExecAndCopy(t *testing.T) {
	s := testserver.Start(t)
	c := newCLI(t, s)
	id := strings.TrimSpace(c.ok(nil, "ws", "create", "--memory", "256MiB", "--env", "GREETING=hi"))
	if !strings.HasPrefix(id, "ws_") {
		t.Fatalf("ws create printed %q", id)
	}
	var ws types.Workspace
	if err := json.Unmarshal([]byte(c.ok(nil, "ws", "get", id, "-o", "json")), &ws); err != nil || ws.ID != id || ws.Env["GREETING"] != "hi" {
		t.Fatalf("ws get -o json: %+v, %v", ws, err)
	}
	if out := c.ok(nil, "ws", "get", id); !strings.Contains(out, "running") {
		t.Fatalf("ws get: %s", out)
	}
	if _, stderr, code := c.run(nil, "ws", "ls", "-o", "yaml"); code == 0 || !strings.Contains(stderr, `only "json" is supported`) {
		t.Fatalf("ws ls -o yaml: exit %d, stderr %q; want a usage error", code, stderr)
	}
	var list []types.Workspace
	if err := json.Unmarshal([]byte(c.ok(nil, "ws", "ls", "-o", "json")), &list); err != nil || len(list) != 1 {
		t.Fatalf("ws ls -o json: %+v, %v", list, err)
	}

	// exec: separate streams, stdin with -i, the remote exit status.
	out, errOut, code := c.run(nil, "exec", id, "--", "sh", "-c", "echo $GREETING; echo oops >&2; exit 7")
	if out != "hi\n" || errOut != "oops\n" || code != 7 {
		t.Fatalf("exec: %q %q %d", out, errOut, code)
	}
	if out := c.ok(strings.NewReader("piped"), "exec", "-i", id, "--", "cat"); out != "piped" {
		t.Fatalf("exec -i: %q", out)
	}

	// SIGINT goes to the remote command, which decides what to do.
	sig := c.cmd(nil, "exec", id, "--", "sh", "-c", `trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 1; done`)
	sigOut, err := sig.StdoutPipe()
	mustDo(t, err)
	mustDo(t, sig.Start())
	rd := bufio.NewReader(sigOut)
	if line, err := rd.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("exec before SIGINT: %q, %v", line, err)
	}
	mustDo(t, sig.Process.Signal(os.Interrupt))
	rest, _ := io.ReadAll(rd)
	err = sig.Wait()
	var ee *exec.ExitError
	if string(rest) != "got-int\n" || !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("exec after SIGINT: %q, %v", rest, err)
	}

	// cp: a directory in and out, and a binary-safe tar through exec.
	src := filepath.Join(t.TempDir(), "src")
	mustDo(t, os.MkdirAll(filepath.Join(src, "a", "b"), 0o755))
	mustDo(t, os.WriteFile(filepath.Join(src, "a", "b", "f.bin"), bytes.Repeat([]byte{0, 255}, 100_000), 0o640))
	mustDo(t, os.WriteFile(filepath.Join(src, "top.txt"), []byte("top\n"), 0o644))
	c.ok(nil, "cp", src, id+":")
	if out := c.ok(nil, "exec", id, "--", "cat", "src/top.txt"); out != "top\n" {
		t.Fatalf("after cp in: %q", out)
	}
	c.ok(nil, "cp", filepath.Join(src, "top.txt"), id+":src/copy.txt")
	dst := filepath.Join(t.TempDir(), "back")
	c.ok(nil, "cp", id+":src", dst)
	b, err := os.ReadFile(filepath.Join(dst, "a", "b", "f.bin"))
	if err != nil || len(b) != 200_000 {
		t.Fatalf("cp out: %d bytes, %v", len(b), err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "copy.txt")); string(b) != "top\n" {
		t.Fatalf("cp out of a copied file: %q", b)
	}
	file := filepath.Join(t.TempDir(), "one.txt")
	c.ok(nil, "cp", id+":src/top.txt", file)
	if b, _ := os.ReadFile(file); string(b) != "top\n" {
		t.Fatalf("cp out a file: %q", b)
	}
	tarball := c.ok(nil, "exec", id, "--", "tar", "c", "-C", "src", "a")
	tr := tar.NewReader(strings.NewReader(tarball))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	if !strings.Contains(strings.Join(names, ","), "a/b/f.bin") {
		t.Fatalf("tar through exec: %v", names)
	}

	// Errors show the server's code on stderr.
	if _, errOut, code := c.run(nil, "ws", "get", "ws_01k80ok5mj4sb77la8ib"); code != 1 || !strings.Contains(errOut, "corral: not_found:") {
		t.Fatalf("get a missing workspace: %d %q", code, errOut)
	}
	if out := c.ok(nil, "ws", "rm", id); strings.TrimSpace(out) != id {
		t.Fatalf("ws rm: %q", out)
	}
	if _, _, code := c.run(nil, "ws", "rm", id); code != 1 {
		t.Fatalf("ws rm twice: %d", code)
	}
	for _, sh := range []string{"bash", "zsh"} {
		if out := c.ok(nil, "completion", sh); !strings.Contains(out, "corral") {
			t.Fatalf("completion %s: %q", sh, out)
		}
	}
	if _, errOut, _ := c.run(nil, "--help"); !strings.Contains(errOut, "exec [-it]") {
		t.Fatalf("--help: %s", errOut)
	}
}

func TestCLIChatAndFollow(t *testing.T) {
	s := testserver.Start(t)
	c := newCLI(t, s)
	s.LLM.Say(testserver.Call("c1", "run_command", map[string]string{"command": "echo from-the-agent"}), testserver.Reply("all done"))
	out, errOut, code := c.run(nil, "chat", "say something")
	if code != 0 {
		t.Fatalf("chat: %d %s %s", code, out, errOut)
	}
	for _, want := range []string{"user> say something\n", "$ echo from-the-agent\n", "from-the-agent\n", "[exit 0]\n", "agent> all done\n", "· waiting"} {
		if !strings.Contains(out, want) {
			t.Fatalf("chat output lacks %q:\n%s", want, out)
		}
	}
	cvID := strings.Fields(errOut)[1]

	// follow prints the events so far and keeps following.
	cmd := c.cmd(nil, "conversation", "follow", cvID, "-o", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	mustDo(t, cmd.Start())
	defer cmd.Process.Kill()
	dec := json.NewDecoder(stdout)
	var last types.Event
	for last.Kind != types.KindState || !strings.Contains(string(last.Payload), "waiting") {
		if err := dec.Decode(&last); err != nil {
			t.Fatal(err)
		}
	}
	// A new message's events arrive on the same follow.
	s.LLM.Say(testserver.Reply("second"))
	c.ok(nil, "chat", "--conversation", cvID, "again")
	for {
		var e types.Event
		if err := dec.Decode(&e); err != nil {
			t.Fatal(err)
		}
		if e.Seq != last.Seq+1 {
			t.Fatalf("follow skipped from %d to %d", last.Seq, e.Seq)
		}
		last = e
		if strings.Contains(string(e.Payload), `"second"`) {
			break
		}
	}
	// Ctrl-C ends it cleanly.
	mustDo(t, cmd.Process.Signal(os.Interrupt))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("follow after SIGINT: %v", err)
	}
}

// The -t path under a real pseudo-terminal: raw mode, the window size and
// its changes, Ctrl-C passed through to the command, and its exit status.
func TestCLIExecTTY(t *testing.T) {
	s := testserver.Start(t)
	c := newCLI(t, s)
	id := strings.TrimSpace(c.ok(nil, "ws", "create"))
	cmd := c.cmd(nil, "exec", "-it", id, "--", "sh")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 91, Rows: 31})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer cmd.Process.Kill()
	out := &syncBuffer{}
	go func() { _, _ = io.Copy(out, ptmx) }()
	expect := func(want string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the terminal's output:\n%s", want, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	write := func(s string) {
		t.Helper()
		if _, err := ptmx.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	write("stty size; echo mark-$((6*7))\r")
	expect("31 91")
	expect("mark-42")
	mustDo(t, pty.Setsize(ptmx, &pty.Winsize{Cols: 120, Rows: 40}))
	// SIGWINCH reaches corral, which resizes the remote terminal; the
	// shell reads the new size on the next command.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(out.String(), "40 120") {
		if time.Now().After(deadline) {
			t.Fatalf("the resize never arrived:\n%s", out.String())
		}
		write("stty size\r")
		time.Sleep(200 * time.Millisecond)
	}
	// Ctrl-C interrupts the remote command, not corral.
	write("echo started-$((3+4)); sleep 600; echo after-$((1+1))\r")
	expect("started-7")
	write("\x03")
	write("echo alive-$((2+3))\r")
	expect("alive-5")
	write("exit 3\r")
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("exit status: %v\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "after-2") {
		t.Fatal("Ctrl-C did not interrupt the sleep")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
