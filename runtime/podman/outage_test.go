package podman

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// service is a rootful Podman service of a test's own: its own socket, its
// own storage (vfs) and its own libpod state and temporary directory (never
// the shared /run/libpod, which the host's service uses), all under a
// temporary directory, so that freezing it holds no lock any other test or
// service needs and cleaning it up touches nothing of theirs.
type service struct {
	t                    *testing.T
	root, run, tmp, sock string
	cmd                  *exec.Cmd
}

func (s *service) podman(args ...string) *exec.Cmd {
	return exec.Command("podman", append([]string{"--root", s.root, "--runroot", s.run, "--tmpdir", s.tmp,
		"--storage-driver", "vfs", "--events-backend", "file"}, args...)...)
}

// startService starts a Podman service on a socket of its own, with
// enginetest.TestImage copied into its storage.
func startService(t *testing.T) *service {
	t.Helper()
	if os.Geteuid() != 0 {
		enginetest.Unavailable(t, "podman (own service)", "run the tests as root", errors.New("not root"))
		return nil
	}
	enginetest.Podman(t, false) // the shared service has the test image to copy
	dir := t.TempDir()
	s := &service{t: t, root: filepath.Join(dir, "root"), run: filepath.Join(dir, "run"), tmp: filepath.Join(dir, "tmp"),
		sock: filepath.Join(dir, "podman.sock")}
	save := exec.Command("podman", "save", enginetest.TestImage)
	load := s.podman("load")
	pipe, err := save.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	load.Stdin = pipe
	if err := save.Start(); err != nil {
		t.Fatalf("podman save: %v", err)
	}
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("podman load: %v: %s", err, out)
	}
	if err := save.Wait(); err != nil {
		t.Fatalf("podman save: %v", err)
	}
	t.Cleanup(func() {
		s.stop()
		// Remove what the service's containers hold (their mounts under
		// the run directory) before the directory goes. Never `system
		// reset`: it empties libpod's temporary directory too.
		for _, args := range [][]string{{"rm", "-af", "-t", "0"}, {"volume", "rm", "-af"}, {"rmi", "-af"}} {
			if out, err := s.podman(args...).CombinedOutput(); err != nil {
				t.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
	})
	s.start()
	return s
}

func (s *service) start() {
	s.t.Helper()
	s.cmd = s.podman("system", "service", "--time=0", "unix://"+s.sock)
	s.cmd.Stdout, s.cmd.Stderr = io.Discard, io.Discard
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start podman service: %v", err)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.sock)
		}}}
	defer c.CloseIdleConnections()
	for i := 0; ; i++ {
		resp, err := c.Get("http://d/_ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if i == 600 {
			s.t.Fatalf("podman service on %s did not answer: %v", s.sock, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop kills the service (continuing it first if it is stopped).
func (s *service) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT)
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

func (s *service) signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("signal podman service: %v", err)
	}
}

// TestEngineOutage freezes (SIGSTOP) and then kills the Podman service
// under a driver: every call fails with engine_unavailable instead of
// hanging, a command whose session is cut off is killed once the engine is
// back, and the driver works again without being reopened.
func TestEngineOutage(t *testing.T) {
	svc := startService(t)
	rt, err := runtime.Open(Name, runtime.Config{
		ServerID: "test-" + randHex(6),
		DataDir:  t.TempDir(),
		InitPath: testbin.Corral(t),
		Options:  map[string]string{"host": "unix://" + svc.sock, "image": enginetest.TestImage},
		Logger:   hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn, Output: io.Discard}),
		// Shorter than the default, so that the test is quicker, and long
		// enough that a busy host never fails a call that should succeed.
		// What the test asserts is the error class, not the time.
		EngineTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("open podman driver: %v", err)
	}
	d := rt.(*Driver)
	t.Cleanup(func() {
		svc.signal(syscall.SIGCONT)
		assertNothingLeft(t, d)
		d.Close()
	})
	ctx := context.Background()
	none := policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}}
	id := "ws-" + randHex(4)
	if err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: none}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Remove(context.Background(), id) })
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	run := func(script string) (runtime.ExitResult, string, error) {
		out := runtime.NewOutput(0)
		res, err := runtime.Run(ctx, d, id, runtime.ExecSpec{Argv: []string{"/bin/sh", "-c", script}, Stdout: out, Stderr: out})
		return res, out.String(), err
	}
	if res, out, err := run("echo hi > f; cat f"); err != nil || res.ExitCode != 0 || out != "hi\n" {
		t.Fatalf("exec before the outage: %v %+v %q", err, res, out)
	}

	// A command whose caller goes away while the engine is frozen.
	sctx, cancelSession := context.WithCancel(ctx)
	long, err := d.Exec(sctx, id, runtime.ExecSpec{Argv: []string{"sleep", "1001"}})
	if err != nil {
		t.Fatal(err)
	}

	svc.signal(syscall.SIGSTOP)
	id2 := "ws-" + randHex(4)
	t.Cleanup(func() { _ = d.Remove(context.Background(), id2) })
	// Concurrently: each waits out the deadline.
	calls := map[string]func() error{
		"create": func() error {
			return d.Create(ctx, runtime.Spec{ID: id2, Image: enginetest.TestImage, Policy: none})
		},
		"exec":                    func() error { _, _, err := run("true"); return err },
		"list (what /ready asks)": func() error { _, err := d.List(ctx); return err },
		"inspect":                 func() error { _, err := d.Inspect(ctx, id); return err },
		"copy out": func() error {
			rc, err := d.CopyOut(ctx, id, "f")
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			return err
		},
	}
	errs := make(map[string]chan error, len(calls))
	for name, call := range calls {
		ch := make(chan error, 1)
		errs[name] = ch
		go func() { ch <- call() }()
	}
	for name, ch := range errs {
		enginetest.AssertUnavailable(t, name, <-ch, svc.sock)
	}
	cancelSession()

	svc.signal(syscall.SIGCONT)
	if _, err := long.Wait(); err != nil {
		t.Logf("cut-off session: %v", err)
	}
	// The service works off what queued while it was frozen first: calls
	// may still time out for a while, then work.
	enginetest.WorksAgain(t, "exec after the engine came back", run)
	// The create that timed out may have been carried out once the
	// service woke: Remove undoes it (as the workspace manager does).
	if err := d.Remove(ctx, id2); err != nil {
		t.Fatalf("remove the timed-out create: %v", err)
	}
	// The cut-off command is killed once the engine answers again.
	for i := 0; ; i++ {
		_, out, err := run("ps -o args | grep -c '^sleep 1001' || true")
		if err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatal(err)
		}
		if err == nil && strings.TrimSpace(out) == "0" {
			break
		}
		if i == 300 {
			t.Fatalf("the command of the cut-off session still runs: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	svc.stop()
	_, _, err = run("true")
	enginetest.AssertUnavailable(t, "exec with the service killed", err, svc.sock)
	_, err = d.List(ctx)
	enginetest.AssertUnavailable(t, "list with the service killed", err, svc.sock)

	svc.start()
	enginetest.WorksAgain(t, "exec after the service restarted", run)
	list, err := d.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("list after the restart: %v %v", list, err)
	}
	if err := d.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
}
