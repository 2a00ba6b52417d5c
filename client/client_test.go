package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/client"
	"github.com/corralhq/corral/internal/testserver"
	"github.com/corralhq/corral/policy"
)

func newClient(t testing.TB, s *testserver.Server, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(s.URL, s.Key, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestWorkspaces(t *testing.T) {
	s := testserver.Start(t)
	c := newClient(t, s)
	ctx := testCtx(t)

	var progress []types.PullProgress
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{Env: map[string]string{"A": "1"}}, func(p types.PullProgress) { progress = append(progress, p) })
	if err != nil {
		t.Fatal(err)
	}
	if ws.State != types.StateRunning || ws.Env["A"] != "1" {
		t.Fatalf("created %+v", ws)
	}
	var ids []string
	ids = append(ids, ws.ID)
	for range 2 {
		w, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, w.ID)
	}
	got, err := c.Workspace(ctx, ws.ID)
	if err != nil || got.ID != ws.ID {
		t.Fatalf("get: %+v, %v", got, err)
	}
	if ready, err := c.WaitReady(ctx, ws.ID); err != nil || ready.State != types.StateRunning {
		t.Fatalf("wait ready: %+v, %v", ready, err)
	}
	var listed []string
	for w, err := range c.Workspaces(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, w.ID)
	}
	if strings.Join(listed, ",") != strings.Join(ids, ",") {
		t.Fatalf("listed %v, want %v", listed, ids)
	}
	// Another user sees none of them, and gets "not found", not "forbidden".
	bob, err := client.New(s.URL, s.OtherKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = bob.Workspace(ctx, ws.ID)
	var apiErr *client.Error
	if !errors.Is(err, client.ErrNotFound) || !errors.As(err, &apiErr) || apiErr.Code != "not_found" || apiErr.Status != 404 {
		t.Fatalf("bob gets alice's workspace: %v", err)
	}
	for range bob.Workspaces(ctx) {
		t.Fatal("bob lists alice's workspaces")
	}
	// A bad key is "unauthenticated".
	bad, _ := client.New(s.URL, "crl_not-a-key")
	if _, err := bad.Workspace(ctx, ws.ID); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("bad key: %v", err)
	}
	// Invalid specs carry the server's code.
	_, err = c.CreateWorkspace(ctx, types.WorkspaceSpec{Network: policy.Network{Mode: "bogus"}}, nil)
	if !errors.Is(err, client.ErrInvalidArgument) || !errors.As(err, &apiErr) || apiErr.Code != "invalid_network" {
		t.Fatalf("bogus network mode: %v", err)
	}
	for _, id := range ids {
		if err := c.DeleteWorkspace(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Workspace(ctx, ws.ID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := c.DeleteWorkspace(ctx, ws.ID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestRunAndStart(t *testing.T) {
	s := testserver.Start(t)
	c := newClient(t, s)
	ctx := testCtx(t)
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}

	// Run: output kept in the result, or written to writers.
	res, err := c.Run(ctx, ws.ID, client.Cmd{Command: "cat; echo err >&2; exit 3", Stdin: strings.NewReader("hello\n")})
	if err != nil || res.ExitCode != 3 || res.Stdout != "hello\n" || res.Stderr != "err\n" {
		t.Fatalf("run: %+v, %v", res, err)
	}
	var out, errOut bytes.Buffer
	res, err = c.Run(ctx, ws.ID, client.Cmd{Argv: []string{"sh", "-c", "echo $X"}, Env: map[string]string{"X": "y"}, Stdout: &out, Stderr: &errOut})
	if err != nil || res.ExitCode != 0 || out.String() != "y\n" || res.Stdout != "" {
		t.Fatalf("run with writers: %+v %q, %v", res, out.String(), err)
	}
	_, err = c.Run(ctx, ws.ID, client.Cmd{Command: "true", Cwd: "no/such/dir"})
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Fatalf("run in a missing cwd: %v", err)
	}

	// Start: binary stdin streamed in, stdout streamed out.
	in := bytes.Repeat([]byte{0, 1, 2, 255}, 300_000)
	out.Reset()
	p, err := c.Start(ctx, ws.ID, client.Cmd{Command: "cat; echo done >&2", Stdin: bytes.NewReader(in), Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatal(err)
	}
	exit, err := p.Wait()
	if err != nil || exit.ExitCode != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("start cat: %+v, %d bytes, %v", exit, out.Len(), err)
	}

	// A TTY that is resized, and a signal.
	pr, pw := io.Pipe()
	tty, err := c.Start(ctx, ws.ID, client.Cmd{Command: "stty size; read line; stty size; sleep 600", TTY: true, Cols: 80, Rows: 24, Stdout: pw})
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 10)
	go func() {
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := pr.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- strings.TrimSpace(acc[:i])
				acc = acc[i+1:]
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	if l := <-lines; l != "24 80" {
		t.Fatalf("tty size %q", l)
	}
	if err := tty.Resize(100, 40); err != nil {
		t.Fatal(err)
	}
	if _, err := tty.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		if l == "40 100" {
			break
		}
		if l != "go" {
			t.Fatalf("after resize: %q", l)
		}
	}
	if err := tty.Signal("KILL"); err != nil {
		t.Fatal(err)
	}
	exit, err = tty.Wait()
	pw.Close()
	if err != nil || exit.Signal != "SIGKILL" {
		t.Fatalf("killed tty: %+v, %v", exit, err)
	}

	// Errors of the socket carry the server's code.
	_, err = c.Start(ctx, ws.ID, client.Cmd{})
	if !errors.Is(err, client.ErrInvalidArgument) || !errors.As(err, &apiErr) || apiErr.Code != "invalid_command" {
		t.Fatalf("start without a command: %v", err)
	}
	_, err = c.Start(ctx, "ws_01k80ok5mj4sb77la8ib", client.Cmd{Command: "true"})
	if !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("start in a missing workspace: %v", err)
	}
}

func TestFiles(t *testing.T) {
	s := testserver.Start(t)
	c := newClient(t, s)
	ctx := testCtx(t)
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := c.WriteFile(ctx, ws.ID, "dir/a b.sh", strings.NewReader("#!/bin/sh\necho hi\n"), -1, 0o755)
	if err != nil || fi.Mode != "0755" || fi.Size != 18 {
		t.Fatalf("write: %+v, %v", fi, err)
	}
	b, err := c.ReadFile(ctx, ws.ID, "dir/a b.sh")
	if err != nil || string(b) != "#!/bin/sh\necho hi\n" {
		t.Fatalf("read: %q, %v", b, err)
	}
	if res, err := c.Run(ctx, ws.ID, client.Cmd{Argv: []string{"sh", "a b.sh"}, Cwd: "dir"}); err != nil || res.Stdout != "hi\n" {
		t.Fatalf("run the written script: %+v, %v", res, err)
	}
	st, err := c.Stat(ctx, ws.ID, "dir")
	if err != nil || st.Type != types.TypeDir {
		t.Fatalf("stat: %+v, %v", st, err)
	}
	entries, err := c.ListDir(ctx, ws.ID, "dir")
	if err != nil || len(entries) != 1 || entries[0].Name != "a b.sh" {
		t.Fatalf("list: %+v, %v", entries, err)
	}
	if _, err := c.ReadFile(ctx, ws.ID, "missing"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("read missing: %v", err)
	}
	if _, err := c.ReadFile(ctx, ws.ID, "../etc/passwd"); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("read outside: %v", err)
	}

	// A directory tree in and out.
	src := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(src, "sub", "deeper"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "top.txt"), []byte("top"), 0o644))
	must(t, os.WriteFile(filepath.Join(src, "sub", "deeper", "x.bin"), bytes.Repeat([]byte{7}, 1<<20), 0o600))
	must(t, c.CopyIn(ctx, ws.ID, src, "project"))
	if res, _ := c.Run(ctx, ws.ID, client.Cmd{Command: "cat project/top.txt; wc -c < project/sub/deeper/x.bin"}); res.Stdout != "top1048576\n" {
		t.Fatalf("after copy in: %q", res.Stdout)
	}
	dst := filepath.Join(t.TempDir(), "out")
	must(t, c.CopyOut(ctx, ws.ID, "project", dst))
	got, err := os.ReadFile(filepath.Join(dst, "project", "sub", "deeper", "x.bin"))
	if err != nil || len(got) != 1<<20 {
		t.Fatalf("after copy out: %d bytes, %v", len(got), err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "project", "sub", "deeper", "x.bin")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("copied-out mode: %v, %v", fi.Mode(), err)
	}

	// Raw archives.
	rc, err := c.ArchiveOut(ctx, ws.ID, "dir")
	if err != nil {
		t.Fatal(err)
	}
	tarball, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	must(t, c.ArchiveIn(ctx, ws.ID, "copy", bytes.NewReader(tarball)))
	if b, err := c.ReadFile(ctx, ws.ID, "copy/dir/a b.sh"); err != nil || !strings.Contains(string(b), "echo hi") {
		t.Fatalf("archive round trip: %q, %v", b, err)
	}

	must(t, c.Remove(ctx, ws.ID, "dir"))
	if _, err := c.Stat(ctx, ws.ID, "dir"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("after remove: %v", err)
	}
}

// An archive cannot make Extract write outside its directory.
func TestExtractStaysInside(t *testing.T) {
	s := testserver.Start(t)
	c := newClient(t, s)
	ctx := testCtx(t)
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The workspace is the attacker: a symlink out, then a file through it.
	res, err := c.Run(ctx, ws.ID, client.Cmd{Command: "mkdir t && ln -s /tmp t/link && ln -s ../../.. t/up && echo x > t/file"})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	dst := t.TempDir()
	must(t, c.CopyOut(ctx, ws.ID, "t", dst))
	// The links are copied as links; writing through them is refused.
	root, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.Create("t/up/escaped"); err == nil {
		t.Fatal("os.Root let a write through a symlink out")
	}
}

func TestRetriesAfterUnavailable(t *testing.T) {
	s := testserver.Start(t)
	ctx := testCtx(t)
	// A front that answers 503 + Retry-After twice, then passes through:
	// GET is retried, and so is POST (the 503 says nothing was done).
	var mu sync.Mutex
	refused := map[string]int{}
	front := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := refused[r.Method]
		refused[r.Method]++
		mu.Unlock()
		if n < 2 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		proxy(w, r, s.URL)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go front.Serve(ln)
	t.Cleanup(func() { front.Close() })
	c, err := client.New("http://"+ln.Addr().String(), s.Key)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Workspace(ctx, ws.ID); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if refused["POST"] != 3 || refused["GET"] != 3 {
		t.Fatalf("attempts %v", refused)
	}
	mu.Unlock()

	// A POST whose connection breaks mid-way is not retried.
	breaks := 0
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln2.Close() })
	go func() {
		for {
			conn, err := ln2.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			breaks++
			mu.Unlock()
			buf := make([]byte, 1024)
			_, _ = conn.Read(buf)
			conn.Close()
		}
	}()
	c2, _ := client.New("http://"+ln2.Addr().String(), s.Key)
	if _, err := c2.Run(ctx, ws.ID, client.Cmd{Command: "true"}); err == nil {
		t.Fatalf("run through a breaking connection: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if breaks != 1 {
		t.Fatalf("a POST with an unknown outcome was sent %d times", breaks)
	}
}

// proxy forwards r to base.
func proxy(w http.ResponseWriter, r *http.Request, base string) {
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), r.Body)
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
