package docker_test

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/docker"
)

// freezer is a unix socket in front of dockerd's that the test can freeze
// (bytes stop flowing both ways, as with a SIGSTOPped engine), thaw, kill
// (connections refused) and restart. dockerd itself is shared with other
// tests, so it cannot be stopped.
type freezer struct {
	t      *testing.T
	sock   string
	engine string

	mu     sync.Mutex
	frozen bool
	thaw   *sync.Cond
	ln     net.Listener
	conns  map[net.Conn]bool
}

func newFreezer(t *testing.T, engine string) *freezer {
	f := &freezer{t: t, sock: filepath.Join(t.TempDir(), "docker.sock"), engine: engine, conns: map[net.Conn]bool{}}
	f.thaw = sync.NewCond(&f.mu)
	f.start()
	t.Cleanup(func() { f.setFrozen(false); f.kill() })
	return f
}

func (f *freezer) start() {
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.ln = ln
	f.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e, err := net.Dial("unix", f.engine)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns[c], f.conns[e] = true, true
			f.mu.Unlock()
			go f.pipe(e, c)
			go f.pipe(c, e)
		}
	}()
}

// pipe copies src to dst, holding each chunk while frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	b := make([]byte, 32<<10)
	for {
		n, err := src.Read(b)
		f.mu.Lock()
		for f.frozen {
			f.thaw.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(b[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *freezer) setFrozen(v bool) {
	f.mu.Lock()
	f.frozen = v
	f.thaw.Broadcast()
	f.mu.Unlock()
}

// kill closes the socket and every connection: the engine is gone.
func (f *freezer) kill() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
	f.conns = map[net.Conn]bool{}
}

// TestEngineOutage freezes and then kills the way to dockerd under a
// driver: every call fails with engine_unavailable instead of hanging, a
// command whose session is cut off is killed once the engine is back, and
// the driver works again without being reopened.
func TestEngineOutage(t *testing.T) {
	host := enginetest.Docker(t)["host"]
	if !strings.HasPrefix(host, "unix://") {
		t.Skip("the engine is not on a unix socket")
	}
	fz := newFreezer(t, strings.TrimPrefix(host, "unix://"))
	d, err := docker.Open(context.Background(), runtime.Config{
		ServerID: serverID,
		InitPath: testbin.Corral(t),
		Options:  map[string]string{"host": "unix://" + fz.sock, "image": enginetest.TestImage},
		Logger:   hclog.NewNullLogger(),
		// Shorter than the default, so that the test is quicker, and long
		// enough that a busy host never fails a call that should succeed.
		// What the test asserts is the error class, not the time.
		EngineTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx := context.Background()
	none := policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}}
	id, id2 := "ws_do_"+randHex(6), "ws_do_"+randHex(6)
	t.Cleanup(func() {
		// Through the engine itself, whatever state the proxy is in.
		d, err := docker.Open(context.Background(), runtime.Config{ServerID: serverID, InitPath: testbin.Corral(t),
			Options: enginetest.Docker(t), Logger: hclog.NewNullLogger()})
		if err != nil {
			t.Error(err)
			return
		}
		defer d.Close()
		for _, id := range []string{id, id2} {
			if err := d.Remove(context.Background(), id); err != nil {
				t.Error(err)
			}
		}
	})
	if err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: none}); err != nil {
		t.Fatal(err)
	}
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
	sctx, cancelSession := context.WithCancel(ctx)
	long, err := d.Exec(sctx, id, runtime.ExecSpec{Argv: []string{"sleep", "1001"}})
	if err != nil {
		t.Fatal(err)
	}

	fz.setFrozen(true)
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
		enginetest.AssertUnavailable(t, name, <-ch, fz.sock)
	}
	cancelSession()

	fz.setFrozen(false)
	if _, err := long.Wait(); err != nil {
		t.Logf("cut-off session: %v", err)
	}
	enginetest.WorksAgain(t, "exec after the engine came back", run)
	// The create that timed out may have been carried out once the
	// engine woke: Remove undoes it (as the workspace manager does).
	if err := d.Remove(ctx, id2); err != nil {
		t.Fatalf("remove the timed-out create: %v", err)
	}
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

	fz.kill()
	_, _, err = run("true")
	enginetest.AssertUnavailable(t, "exec with the engine gone", err, fz.sock)
	_, err = d.List(ctx)
	enginetest.AssertUnavailable(t, "list with the engine gone", err, fz.sock)

	fz.start()
	enginetest.WorksAgain(t, "exec after the engine came back", run)
	if err := d.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
}
