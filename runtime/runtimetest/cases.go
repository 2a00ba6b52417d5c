package runtimetest

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

func (s *suite) testLifecycle(t *testing.T) {
	ctx := ctxT(t)
	sp := s.spec()
	if err := s.rt.Create(ctx, sp); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = s.rt.Remove(context.Background(), sp.ID) })
	st, err := s.rt.Inspect(ctx, sp.ID)
	if err != nil {
		t.Fatalf("Inspect after Create: %v", err)
	}
	if st.ID != sp.ID || st.State != runtime.StateCreated {
		t.Errorf("Inspect after Create = %+v, want ID %s state created", st, sp.ID)
	}
	for round := 1; round <= 2; round++ {
		if err := s.rt.Start(ctx, sp.ID); err != nil {
			t.Fatalf("Start (round %d): %v", round, err)
		}
		st, err = s.rt.Inspect(ctx, sp.ID)
		if err != nil || st.State != runtime.StateRunning {
			t.Fatalf("Inspect after Start (round %d) = %+v, %v; want running", round, st, err)
		}
		if st.StartedAt.IsZero() {
			t.Errorf("running workspace has no StartedAt")
		}
		if out := s.mustSh(t, sp.ID, "echo hello"); out != "hello\n" {
			t.Errorf("echo hello printed %q", out)
		}
		if err := s.rt.Stop(ctx, sp.ID); err != nil {
			t.Fatalf("Stop (round %d): %v", round, err)
		}
		st, err = s.rt.Inspect(ctx, sp.ID)
		if err != nil || st.State != runtime.StateStopped {
			t.Fatalf("Inspect after Stop (round %d) = %+v, %v; want stopped", round, st, err)
		}
	}
	if err := s.rt.Remove(ctx, sp.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	_, err = s.rt.Inspect(ctx, sp.ID)
	wantClass(t, "Inspect after Remove", err, errdefs.ErrNotFound)
}

func (s *suite) testCreateExisting(t *testing.T) {
	ctx := ctxT(t)
	sp := s.spec()
	if err := s.rt.Create(ctx, sp); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = s.rt.Remove(context.Background(), sp.ID) })
	wantClass(t, "second Create", s.rt.Create(ctx, sp), errdefs.ErrAlreadyExists)
	// The failed Create must not have hurt the existing workspace.
	if err := s.rt.Start(ctx, sp.ID); err != nil {
		t.Fatalf("Start after failed Create: %v", err)
	}
	s.mustSh(t, sp.ID, "true")
}

func (s *suite) testIdempotent(t *testing.T) {
	ctx := ctxT(t)
	id := s.create(t)
	if err := s.rt.Stop(ctx, id); err != nil {
		t.Errorf("Stop of a created workspace: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := s.rt.Start(ctx, id); err != nil {
			t.Fatalf("Start #%d: %v", i+1, err)
		}
	}
	s.mustSh(t, id, "true")
	for i := 0; i < 2; i++ {
		if err := s.rt.Stop(ctx, id); err != nil {
			t.Fatalf("Stop #%d: %v", i+1, err)
		}
	}
	for i := 0; i < 2; i++ {
		if err := s.rt.Remove(ctx, id); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
}

func (s *suite) testNotFound(t *testing.T) {
	ctx := ctxT(t)
	id := "ws_rt_missing_" + randHex(6)
	_, err := s.rt.Inspect(ctx, id)
	wantClass(t, "Inspect", err, errdefs.ErrNotFound)
	wantClass(t, "Start", s.rt.Start(ctx, id), errdefs.ErrNotFound)
	wantClass(t, "Stop", s.rt.Stop(ctx, id), errdefs.ErrNotFound)
	_, err = s.rt.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"true"}})
	wantClass(t, "Exec", err, errdefs.ErrNotFound)
	_, err = s.rt.CopyOut(ctx, id, "x")
	wantClass(t, "CopyOut", err, errdefs.ErrNotFound)
	err = s.rt.CopyIn(ctx, id, "", makeTar(t, []tarEntry{{Name: "f", Type: tar.TypeReg, Mode: 0o644, Body: "x"}}))
	wantClass(t, "CopyIn", err, errdefs.ErrNotFound)
	if err := s.rt.Remove(ctx, id); err != nil {
		t.Errorf("Remove of a missing workspace: %v, want nil", err)
	}
	// A missing path in an existing workspace is not found too.
	ws := s.create(t)
	_, err = s.rt.CopyOut(ctx, ws, "no/such/file")
	wantClass(t, "CopyOut of a missing path", err, errdefs.ErrNotFound)
}

func (s *suite) testExecStopped(t *testing.T) {
	ctx := ctxT(t)
	id := s.create(t)
	_, err := s.rt.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"true"}})
	wantClass(t, "Exec in a created workspace", err, errdefs.ErrFailedPrecondition)
	if err := s.rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := s.rt.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err = s.rt.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"true"}})
	wantClass(t, "Exec in a stopped workspace", err, errdefs.ErrFailedPrecondition)
	_, err = s.rt.Exec(ctx, id, runtime.ExecSpec{})
	if err == nil {
		t.Errorf("Exec with no argv succeeded")
	}
}

func (s *suite) testList(t *testing.T) {
	ctx := ctxT(t)
	running := s.running(t)
	stopped := s.create(t)
	all, err := s.rt.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	states := map[string]runtime.State{}
	for _, st := range all {
		states[st.ID] = st.State
	}
	if states[running] != runtime.StateRunning {
		t.Errorf("List: %s has state %q, want running", running, states[running])
	}
	if got := states[stopped]; got != runtime.StateCreated && got != runtime.StateStopped {
		t.Errorf("List: %s has state %q, want created or stopped", stopped, got)
	}
}

func (s *suite) testExitCodes(t *testing.T) {
	id := s.running(t)
	for _, tc := range []struct {
		argv []string
		want int
	}{
		{[]string{"true"}, 0},
		{[]string{"sh", "-c", "exit 3"}, 3},
		{[]string{"no-such-command-" + randHex(4)}, 127},
		{[]string{"/no/such/path/cmd"}, 127},
	} {
		r := s.run(t, id, runtime.ExecSpec{Argv: tc.argv})
		if r.ExitCode != tc.want || r.Signal != "" || r.TimedOut || r.OOMKilled {
			t.Errorf("%q: got %+v, want exit code %d", tc.argv, r.ExitResult, tc.want)
		}
	}
}

func (s *suite) testSignals(t *testing.T) {
	id := s.running(t)
	for _, sig := range []runtime.Signal{"SIGTERM", "SIGKILL", "SIGINT"} {
		t.Run(string(sig), func(t *testing.T) {
			ctx := ctxT(t)
			var out syncBuffer
			p, err := s.rt.Exec(ctx, id, runtime.ExecSpec{
				Argv:   []string{"sh", "-c", "echo ready; exec sleep " + token()},
				Stdout: &out,
			})
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			waitFor(t, &out, "ready")
			if err := p.Signal(ctx, sig); err != nil {
				t.Fatalf("Signal(%s): %v", sig, err)
			}
			res, err := p.Wait()
			if err != nil {
				t.Fatalf("Wait: %v", err)
			}
			want := runtime.SignalResult(sig.Num())
			if res.ExitCode != want.ExitCode || res.Signal != want.Signal {
				t.Errorf("after %s: got %+v, want exit code %d signal %s", sig, res, want.ExitCode, want.Signal)
			}
			if err := p.Signal(ctx, "SIGTERM"); err != nil {
				t.Errorf("Signal after exit: %v, want nil", err)
			}
			if err := p.Resize(ctx, runtime.WindowSize{Cols: 10, Rows: 10}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Errorf("Resize without a TTY: %v, want ErrFailedPrecondition", err)
			}
		})
	}
}

func (s *suite) testStdin(t *testing.T) {
	id := s.running(t)
	r := s.run(t, id, runtime.ExecSpec{Argv: []string{"cat"}, Stdin: strings.NewReader("hello\nworld\n")})
	if r.ExitCode != 0 || r.Stdout != "hello\nworld\n" {
		t.Errorf("cat: %+v stdout %q", r.ExitResult, r.Stdout)
	}
	// nil stdin is empty: cat ends at once.
	r = s.run(t, id, runtime.ExecSpec{Argv: []string{"wc", "-c"}})
	if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "0" {
		t.Errorf("wc -c with nil stdin: %+v stdout %q", r.ExitResult, r.Stdout)
	}
	// Closing stdin is EOF to the command, while it keeps running.
	pr, pw := io.Pipe()
	var out syncBuffer
	p, err := s.rt.Exec(ctxT(t), id, runtime.ExecSpec{
		Argv:   []string{"sh", "-c", "cat; echo after-eof"},
		Stdin:  pr,
		Stdout: &out,
	})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if _, err := pw.Write([]byte("first\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &out, "first\n")
	pw.Close()
	res, err := p.Wait()
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Wait: %+v, %v", res, err)
	}
	if got := out.String(); got != "first\nafter-eof\n" {
		t.Errorf("stdout %q, want %q", got, "first\nafter-eof\n")
	}
}

// testWaitWithStdinOpen checks that Wait returns once the command exits,
// even though the caller's Stdin never reaches EOF (an interactive client
// that keeps its input open).
func (s *suite) testWaitWithStdinOpen(t *testing.T) {
	id := s.running(t)
	for _, tc := range []struct {
		name string
		argv []string
		feed string
		want string
	}{
		{"ignores stdin", []string{"echo", "done"}, "", "done\n"},
		{"reads some", []string{"head", "-c", "3"}, "abcdef\n", "abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			var out syncBuffer
			p, err := s.rt.Exec(ctxT(t), id, runtime.ExecSpec{Argv: tc.argv, Stdin: pr, Stdout: &out})
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			if tc.feed != "" {
				go pw.Write([]byte(tc.feed))
			}
			type waited struct {
				res runtime.ExitResult
				err error
			}
			done := make(chan waited, 1)
			go func() {
				res, err := p.Wait()
				done <- waited{res, err}
			}()
			select {
			case w := <-done:
				if w.err != nil || w.res.ExitCode != 0 {
					t.Errorf("Wait: %+v, %v", w.res, w.err)
				}
				if got := out.String(); got != tc.want {
					t.Errorf("stdout %q, want %q", got, tc.want)
				}
			case <-time.After(wait):
				t.Fatalf("Wait did not return %s after the command exited while stdin stayed open; output %q", wait, out.String())
			}
		})
	}
}

func (s *suite) testLargeOutput(t *testing.T) {
	id := s.running(t)
	const n = 6 << 20
	var out, errw countWriter
	res, err := runtime.Run(ctxT(t), s.rt, id, runtime.ExecSpec{
		Argv:   []string{"sh", "-c", fmt.Sprintf("head -c %d /dev/zero; head -c %d /dev/zero >&2", n, n/2)},
		Stdout: &out, Stderr: &errw,
	})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("head: %+v, %v", res, err)
	}
	if out.n != n || errw.n != n/2 || out.nonZero || errw.nonZero {
		t.Errorf("got %d bytes of stdout and %d of stderr, want %d and %d zero bytes", out.n, errw.n, n, n/2)
	}
	// Several MiB in and out at once: no deadlock, nothing lost.
	var echo countWriter
	res, err = runtime.Run(ctxT(t), s.rt, id, runtime.ExecSpec{
		Argv:   []string{"cat"},
		Stdin:  io.LimitReader(zeroReader{}, n),
		Stdout: &echo,
	})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("cat: %+v, %v", res, err)
	}
	if echo.n != n || echo.nonZero {
		t.Errorf("cat echoed %d bytes, want %d", echo.n, n)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func (s *suite) testStdoutStderr(t *testing.T) {
	id := s.running(t)
	r := s.sh(t, id, "echo out; echo err >&2; echo out2; exit 5")
	if r.ExitCode != 5 || r.Stdout != "out\nout2\n" || r.Stderr != "err\n" {
		t.Errorf("got %+v stdout %q stderr %q", r.ExitResult, r.Stdout, r.Stderr)
	}
}

func (s *suite) testTTY(t *testing.T) {
	if !s.rt.Capabilities().TTY {
		t.Skip("driver reports no TTY support")
	}
	id := s.running(t)
	ctx := ctxT(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	var out syncBuffer
	p, err := s.rt.Exec(ctx, id, runtime.ExecSpec{
		Argv:  []string{"sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty; stty size; read x; stty size; echo TERM=$TERM"},
		TTY:   true,
		Size:  runtime.WindowSize{Cols: 80, Rows: 24},
		Stdin: pr, Stdout: &out,
	})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	waitFor(t, &out, "24 80")
	if err := p.Resize(ctx, runtime.WindowSize{Cols: 100, Rows: 30}); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	if _, err := pw.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait()
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Wait: %+v, %v; output %q", res, err, out.String())
	}
	got := out.String()
	for _, want := range []string{"is-a-tty", "24 80", "30 100", "TERM=xterm"} {
		if !strings.Contains(got, want) {
			t.Errorf("TTY output %q lacks %q", got, want)
		}
	}
}

func (s *suite) testCwd(t *testing.T) {
	id := s.running(t)
	s.mustSh(t, id, "mkdir -p sub/dir")
	home := strings.TrimSpace(s.mustSh(t, id, "pwd"))
	if h := strings.TrimSpace(s.mustSh(t, id, "echo $HOME")); h != home {
		t.Errorf("default cwd %q is not $HOME %q", home, h)
	}
	for _, cwd := range []string{"sub/dir", "/sub/dir", "./sub//dir/"} {
		r := s.run(t, id, runtime.ExecSpec{Argv: []string{"pwd"}, Cwd: cwd})
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != home+"/sub/dir" {
			t.Errorf("pwd in %q: %+v %q, want %q", cwd, r.ExitResult, r.Stdout, home+"/sub/dir")
		}
	}
	for _, cwd := range []string{"..", "../..", "sub/../../x"} {
		_, err := s.rt.Exec(ctxT(t), id, runtime.ExecSpec{Argv: []string{"pwd"}, Cwd: cwd})
		wantEscape(t, "Exec with Cwd "+cwd, err)
	}
	_, err := s.rt.Exec(ctxT(t), id, runtime.ExecSpec{Argv: []string{"pwd"}, Cwd: "no/such/dir"})
	if err == nil {
		t.Errorf("Exec with a missing Cwd succeeded")
	}
}

func (s *suite) testEnv(t *testing.T) {
	id := s.running(t)
	r := s.run(t, id, runtime.ExecSpec{
		Argv: []string{"sh", "-c", "echo $CORRAL_SPEC_ENV $CORRAL_EXEC_ENV $CORRAL_OVERRIDE; test -n \"$PATH\" && test -n \"$HOME\" && echo ok"},
		Env:  map[string]string{"CORRAL_EXEC_ENV": "from-exec", "CORRAL_OVERRIDE": "exec"},
	})
	if r.ExitCode != 0 || r.Stdout != "from-spec from-exec exec\nok\n" {
		t.Errorf("env: %+v stdout %q stderr %q", r.ExitResult, r.Stdout, r.Stderr)
	}
}

func (s *suite) testFileRoundTrip(t *testing.T) {
	ctx := ctxT(t)
	id := s.running(t)
	in := []tarEntry{
		{Name: "a/", Type: tar.TypeDir, Mode: 0o750},
		{Name: "a/b/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "a/b/f.txt", Type: tar.TypeReg, Mode: 0o640, Body: "hello file\n"},
		{Name: "a/run.sh", Type: tar.TypeReg, Mode: 0o755, Body: "#!/bin/sh\necho ran\n"},
		{Name: "a/link", Type: tar.TypeSymlink, Mode: 0o777, Linkname: "b/f.txt"},
		// Parents that the stream does not list are created.
		{Name: "a/deep/er/g.txt", Type: tar.TypeReg, Mode: 0o600, Body: "g"},
	}
	if err := s.rt.CopyIn(ctx, id, "dst/in", makeTar(t, in)); err != nil {
		t.Fatalf("CopyIn: %v", err)
	}
	if out := s.mustSh(t, id, "cat dst/in/a/link; ./dst/in/a/run.sh; cat dst/in/a/deep/er/g.txt"); out != "hello file\nran\ng" {
		t.Errorf("files inside the workspace read %q", out)
	}
	rc, err := s.rt.CopyOut(ctx, id, "dst/in/a")
	if err != nil {
		t.Fatalf("CopyOut: %v", err)
	}
	got := readTar(t, rc)
	for _, want := range in {
		g, ok := got[want.Name]
		if !ok {
			t.Errorf("CopyOut lacks %s; has %v", want.Name, keys(got))
			continue
		}
		if g.Type != want.Type || g.Body != want.Body || g.Linkname != want.Linkname {
			t.Errorf("CopyOut %s = type %c body %q link %q, want type %c body %q link %q",
				want.Name, g.Type, g.Body, g.Linkname, want.Type, want.Body, want.Linkname)
		}
		if want.Type != tar.TypeSymlink && g.Mode != want.Mode {
			t.Errorf("CopyOut %s mode %o, want %o", want.Name, g.Mode, want.Mode)
		}
	}
	// A single file comes out under its own name.
	rc, err = s.rt.CopyOut(ctx, id, "/dst/in/a/b/f.txt")
	if err != nil {
		t.Fatalf("CopyOut of a file: %v", err)
	}
	got = readTar(t, rc)
	if len(got) != 1 || got["f.txt"].Body != "hello file\n" {
		t.Errorf("CopyOut of a file gave %v", got)
	}
	// CopyIn overwrites, and CopyIn into the root works.
	if err := s.rt.CopyIn(ctx, id, "", makeTar(t, []tarEntry{{Name: "dst/in/a/b/f.txt", Type: tar.TypeReg, Mode: 0o644, Body: "new"}})); err != nil {
		t.Fatalf("CopyIn over a file: %v", err)
	}
	if out := s.mustSh(t, id, "cat dst/in/a/b/f.txt"); out != "new" {
		t.Errorf("overwritten file reads %q", out)
	}
}

func keys(m map[string]tarEntry) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

func (s *suite) testPathEscape(t *testing.T) {
	ctx := ctxT(t)
	id := s.running(t)
	file := func(name string) []tarEntry {
		return []tarEntry{{Name: name, Type: tar.TypeReg, Mode: 0o644, Body: "escaped"}}
	}
	// Links that lead out of the workspace may exist; using them must fail.
	if err := s.rt.CopyIn(ctx, id, "", makeTar(t, []tarEntry{
		{Name: "toroot", Type: tar.TypeSymlink, Linkname: "/"},
		{Name: "up", Type: tar.TypeSymlink, Linkname: "../../../../../../.."},
		{Name: "d/", Type: tar.TypeDir, Mode: 0o755},
	})); err != nil {
		t.Fatalf("CopyIn of symlinks: %v", err)
	}
	wantEscape(t, "CopyIn to ..", s.rt.CopyIn(ctx, id, "..", makeTar(t, file("x"))))
	wantEscape(t, "CopyIn to d/../..", s.rt.CopyIn(ctx, id, "d/../..", makeTar(t, file("x"))))
	wantEscape(t, "CopyIn entry ../x", s.rt.CopyIn(ctx, id, "d", makeTar(t, file("../../x"))))
	wantEscape(t, "CopyIn entry /abs", s.rt.CopyIn(ctx, id, "d", makeTar(t, file("/tmp/corral-escape-"+randHex(4)))))
	wantEscape(t, "CopyIn through a symlink to /", s.rt.CopyIn(ctx, id, "toroot/tmp", makeTar(t, file("corral-escape-"+randHex(4)))))
	wantEscape(t, "CopyIn entry through a symlink to /", s.rt.CopyIn(ctx, id, "", makeTar(t, file("toroot/tmp/corral-escape-"+randHex(4)))))
	wantEscape(t, "CopyIn through a relative symlink", s.rt.CopyIn(ctx, id, "up", makeTar(t, file("corral-escape-"+randHex(4)))))
	wantEscape(t, "CopyIn of a symlink then a file through it", s.rt.CopyIn(ctx, id, "d", makeTar(t, []tarEntry{
		{Name: "sneaky", Type: tar.TypeSymlink, Linkname: "/tmp"},
		{Name: "sneaky/corral-escape-" + randHex(4), Type: tar.TypeReg, Mode: 0o644, Body: "x"},
	})))
	for _, p := range []string{"..", "../etc/passwd", "toroot/etc/passwd", "toroot/etc", "up/etc/passwd"} {
		rc, err := s.rt.CopyOut(ctx, id, p)
		if err == nil {
			rc.Close()
		}
		wantEscape(t, "CopyOut "+p, err)
	}
	// The link itself can still be copied out, as a link.
	rc, err := s.rt.CopyOut(ctx, id, "toroot")
	if err != nil {
		t.Fatalf("CopyOut of the link itself: %v", err)
	}
	got := readTar(t, rc)
	if e := got["toroot"]; e.Type != tar.TypeSymlink || e.Linkname != "/" {
		t.Errorf("CopyOut toroot = %+v, want a symlink to /", got)
	}
}

func (s *suite) testPersistAcrossStop(t *testing.T) {
	ctx := ctxT(t)
	id := s.running(t)
	s.mustSh(t, id, "mkdir -p keep && echo kept > keep/file")
	if err := s.rt.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	// Files can be copied while stopped.
	if err := s.rt.CopyIn(ctx, id, "keep", makeTar(t, []tarEntry{{Name: "while-stopped", Type: tar.TypeReg, Mode: 0o644, Body: "yes"}})); err != nil {
		t.Fatalf("CopyIn while stopped: %v", err)
	}
	rc, err := s.rt.CopyOut(ctx, id, "keep/file")
	if err != nil {
		t.Fatalf("CopyOut while stopped: %v", err)
	}
	if got := readTar(t, rc); got["file"].Body != "kept\n" {
		t.Errorf("CopyOut while stopped: %v", got)
	}
	if err := s.rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if out := s.mustSh(t, id, "cat keep/file keep/while-stopped"); out != "kept\nyes" {
		t.Errorf("after restart: %q", out)
	}
}

func (s *suite) testTimeoutKillsTree(t *testing.T) {
	id := s.running(t)
	tok := token()
	// The second sleep is orphaned (its subshell exits at once), so it is
	// no longer a descendant of the command: it must be found anyway.
	script := fmt.Sprintf("sleep %s & (sh -c 'sleep %s' &) ; sleep %s & wait", tok, tok, tok)
	r := s.run(t, id, runtime.ExecSpec{Argv: []string{"sh", "-c", script}, Timeout: 300 * time.Millisecond})
	if !r.TimedOut || r.ExitCode == 0 {
		t.Errorf("got %+v, want a timed-out, non-zero result", r.ExitResult)
	}
	s.waitGone(t, id, tok)
	// A command that finishes in time is not marked.
	r = s.run(t, id, runtime.ExecSpec{Argv: []string{"true"}, Timeout: time.Minute})
	if r.TimedOut || r.ExitCode != 0 {
		t.Errorf("quick command with a timeout: %+v", r.ExitResult)
	}
}

func (s *suite) testCancelKills(t *testing.T) {
	id := s.running(t)
	tok := token()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	p, err := s.rt.Exec(ctx, id, runtime.ExecSpec{
		Argv:   []string{"sh", "-c", fmt.Sprintf("sleep %s & echo started; sleep %s; wait", tok, tok)},
		Stdout: &out,
	})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	waitFor(t, &out, "started")
	cancel()
	res, err := p.Wait()
	if err != nil {
		t.Fatalf("Wait after cancel: %v", err)
	}
	if res.ExitCode == 0 {
		t.Errorf("cancelled command exited 0: %+v", res)
	}
	s.waitGone(t, id, tok)
}

func (s *suite) testNoZombies(t *testing.T) {
	id := s.running(t)
	// The subshells exit at once; their sleep children are orphaned and
	// exit shortly after, and must then be reaped by the sandbox's init.
	// They keep the exec's session, which the first line (cat's own stat)
	// reports, so only they are looked at even where other processes are
	// visible.
	out := s.mustSh(t, id, "cat /proc/self/stat; (sleep 0.2 &) ; (sleep 0.1 & sleep 0.1 &) ; true")
	sid := statField(strings.SplitN(out, "\n", 2)[0], 6)
	if sid == "" {
		t.Fatalf("cannot read the session from %q", out)
	}
	time.Sleep(500 * time.Millisecond) // let the orphans exit
	deadline := time.Now().Add(wait)
	for {
		var ours []string
		for _, z := range s.zombies(t, id) {
			if statField(z, 6) == sid {
				ours = append(ours, z)
			}
		}
		if len(ours) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("zombies left: %q", ours)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// statField returns field n (1-based, as in proc(5)) of a /proc/PID/stat
// line, or "".
func statField(line string, n int) string {
	i := strings.LastIndexByte(line, ')')
	if i < 0 || n < 3 {
		return ""
	}
	f := strings.Fields(line[i+1:])
	if len(f) < n-2 {
		return ""
	}
	return f[n-3]
}

func (s *suite) testStopKillsEverything(t *testing.T) {
	ctx := ctxT(t)
	id := s.running(t)
	tok := token()
	// Orphaned background processes outlive the exec that started them.
	s.mustSh(t, id, fmt.Sprintf("(sleep %s >/dev/null 2>&1 &) ; (sleep %s </dev/null >/dev/null 2>&1 &) ; true", tok, tok))
	if left := s.procsWith(t, id, tok); len(left) != 2 {
		t.Fatalf("want 2 background sleeps before Stop, found %q", left)
	}
	// A command still running when Stop comes ends too.
	p, err := s.rt.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"sleep", tok}})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if err := s.rt.Stop(ctx, id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if res, err := p.Wait(); err == nil && res.ExitCode == 0 {
			t.Errorf("command running at Stop exited 0")
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("Wait did not return after Stop")
	}
	if err := s.rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	s.waitGone(t, id, tok)
}

func (s *suite) testConcurrentExecs(t *testing.T) {
	id := s.running(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out syncBuffer
			res, err := runtime.Run(context.Background(), s.rt, id, runtime.ExecSpec{
				Argv:   []string{"sh", "-c", "echo $1; head -c 100000 /dev/zero | wc -c", "sh", fmt.Sprint(i)},
				Stdout: &out,
			})
			want := fmt.Sprintf("%d\n100000\n", i)
			if err != nil || res.ExitCode != 0 || strings.ReplaceAll(out.String(), " ", "") != want {
				errs <- fmt.Errorf("exec %d: %+v, %v, stdout %q", i, res, err, out.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
