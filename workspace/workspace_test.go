package workspace

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"

	_ "github.com/corralhq/corral/runtime/docker"
	_ "github.com/corralhq/corral/runtime/process"
)

// harness is a Manager on a real SQLite file and a real runtime.
type harness struct {
	db    *store.DB
	rt    runtime.Runtime
	mgr   *Manager
	proxy *policy.Proxy
	user  store.User
	cfg   Config
}

func newHarness(t *testing.T, driver string, opts map[string]string, pol policy.Config) *harness {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := store.Open(ctx, filepath.Join(dir, "corral.db"))
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Warn, Output: io.Discard})
	rt, err := runtime.Open(driver, runtime.Config{
		DataDir: filepath.Join(dir, "runtime"), ServerID: "srv_wstest_" + store.NewID("x")[2:],
		InitPath: testbin.Corral(t), Options: opts, Logger: log,
	})
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	// Unix socket paths are short: keep the proxy's directory near /tmp.
	pdir, err := os.MkdirTemp("", "cwp")
	if err != nil {
		t.Fatal(err)
	}
	proxy := &policy.Proxy{Dir: pdir, Logger: log}
	h := &harness{db: db, rt: rt, proxy: proxy}
	h.cfg = Config{DB: db, Runtime: rt, Policy: pol, Proxy: proxy, Logger: log, DefaultImage: opts["image"]}
	h.mgr = New(h.cfg)
	if h.user, err = db.EnsureUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rows, _ := db.AllWorkspaces(ctx)
		for _, r := range rows {
			_ = h.mgr.Delete(ctx, r.UserID, r.ID)
		}
		live, _ := rt.List(ctx)
		for _, s := range live {
			_ = rt.Remove(ctx, s.ID)
		}
		_ = proxy.Shutdown(ctx)
		os.RemoveAll(pdir)
		rt.Close()
		db.Close()
	})
	return h
}

func newProcess(t *testing.T) *harness {
	return newHarness(t, "process", nil, policy.DefaultConfig())
}

// leftovers fails the test if anything of any workspace is left: a row, a
// sandbox or a proxy socket.
func (h *harness) wantNothingLeft(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	rows, err := h.db.AllWorkspaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 0 {
		t.Errorf("rows left: %+v", rows)
	}
	live, err := h.rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 0 {
		t.Errorf("sandboxes left: %+v", live)
	}
	ents, _ := os.ReadDir(h.proxy.Dir)
	for _, e := range ents {
		t.Errorf("proxy socket directory left: %s", e.Name())
	}
}

func (h *harness) state(t *testing.T, id string) string {
	t.Helper()
	w, err := h.mgr.Get(context.Background(), h.user.ID, id)
	if err != nil {
		t.Fatal(err)
	}
	return w.State
}

func (h *harness) run(t *testing.T, id, script string) ExecuteResult {
	t.Helper()
	res, err := h.mgr.Execute(context.Background(), h.user, id, ExecuteRequest{Command: Command{Command: script}})
	if err != nil {
		t.Fatalf("execute %q: %v", script, err)
	}
	return res
}

func TestCreateRefusedLeavesNothing(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	for name, spec := range map[string]Spec{
		"over max":    {Limits: policy.Limits{Memory: 1 << 40}},
		"bad env":     {Env: map[string]string{"1BAD": "x"}},
		"NUL in env":  {Env: map[string]string{"A": "x\x00y"}},
		"bad network": {Network: policy.Network{Mode: "open", AllowedHosts: []string{"example.com"}}},
	} {
		_, err := h.mgr.Create(ctx, h.user, spec, nil)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want an invalid-argument error", name, err)
		}
	}
	h.wantNothingLeft(t)
	_, err := Command{Command: "true", Env: map[string]string{"A": "x\x00y"}}.ExecSpec()
	if errdefs.Code(err) != "invalid_env" {
		t.Errorf("command env with NUL: %v, want invalid_env", err)
	}
}

func TestCreateUnenforceableLimitLeavesNothing(t *testing.T) {
	h := newProcess(t)
	caps := h.rt.Capabilities().Policy
	var spec Spec
	switch {
	case !caps.Disk:
		spec.Limits.Disk = 64 << 20
	case !caps.Memory:
		spec.Limits.Memory = 64 << 20
	case !caps.Pids:
		spec.Limits.Pids = 64
	}
	if spec.Limits != (policy.Limits{}) {
		_, err := h.mgr.Create(context.Background(), h.user, spec, nil)
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "process") {
			t.Fatalf("got %v, want a failed-precondition error naming the runtime", err)
		}
	}
	// Without an egress proxy, allowlist cannot be enforced on any host.
	cfg := h.cfg
	cfg.Proxy = nil
	_, err := New(cfg).Create(context.Background(), h.user, Spec{Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"example.com"}}}, nil)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("allowlist without a proxy: got %v, want a failed-precondition error", err)
	}
	h.wantNothingLeft(t)
}

// A create that fails after its row, proxy socket and maybe sandbox exist
// must take them all away again.
func TestCreateBadImageLeavesNothing(t *testing.T) {
	h := newHarness(t, "docker", enginetest.Docker(t), policy.DefaultConfig())
	spec := Spec{
		Image:   "corral-test-no-such-image:never",
		Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"example.com"}},
	}
	_, err := h.mgr.Create(context.Background(), h.user, spec, nil)
	if err == nil {
		t.Fatal("create with a missing image succeeded")
	}
	t.Logf("missing image: %v (code %q)", err, errdefs.Code(err))
	if errdefs.Code(err) == "" || errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a missing image should be a client error with a code, not a 404 or a bare error: %v (code %q)", err, errdefs.Code(err))
	}
	h.wantNothingLeft(t)
}

func TestIdleStopThenStartOnUse(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	ws, err := h.mgr.Create(ctx, h.user, Spec{Limits: policy.Limits{IdleTimeout: policy.Duration(time.Second)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.run(t, ws.ID, "echo kept > f")
	h.mgr.flushUsed(ctx)

	// Not idle yet: left alone.
	if err := h.mgr.sweep(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if s := h.state(t, ws.ID); s != StateRunning {
		t.Fatalf("state %s before the idle timeout, want running", s)
	}
	if err := h.mgr.sweep(ctx, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if s := h.state(t, ws.ID); s != StateStopped {
		t.Fatalf("state %s after the idle timeout, want stopped", s)
	}
	st, err := h.rt.Inspect(ctx, ws.ID)
	if err != nil || st.State == runtime.StateRunning {
		t.Fatalf("sandbox after idle stop: %+v, %v", st, err)
	}

	// Files are listed while stopped, and the next command starts it.
	e, err := h.mgr.Open(ctx, h.user.ID, ws.ID, "")
	if err != nil || len(e.Entries) != 1 {
		t.Fatalf("listing a stopped workspace: %+v, %v", e.Entries, err)
	}
	if res := h.run(t, ws.ID, "cat f"); res.Stdout != "kept\n" || res.ExitCode != 0 {
		t.Fatalf("after restart: %+v", res)
	}
	if s := h.state(t, ws.ID); s != StateRunning {
		t.Fatalf("state %s after use, want running", s)
	}
}

// A command that is running keeps its workspace from being stopped.
func TestIdleStopSparesBusyWorkspace(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	ws, err := h.mgr.Create(ctx, h.user, Spec{Limits: policy.Limits{IdleTimeout: policy.Duration(time.Second)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.mgr.Exec(ctx, h.user.ID, ws.ID, runtime.ExecSpec{Argv: []string{"sleep", "2"}})
	if err != nil {
		t.Fatal(err)
	}
	h.mgr.flushUsed(ctx)
	if err := h.mgr.sweep(ctx, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait()
	if err != nil || res.ExitCode != 0 || res.Signal != "" {
		t.Fatalf("busy command: %+v, %v (stopped under it?)", res, err)
	}
	if s := h.state(t, ws.ID); s != StateRunning {
		t.Fatalf("state %s with a command running, want running", s)
	}
}

func TestLifetimeDeletes(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	ws, err := h.mgr.Create(ctx, h.user, Spec{Limits: policy.Limits{Lifetime: policy.Duration(time.Hour)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	keep, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.mgr.sweep(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.mgr.Get(ctx, h.user.ID, ws.ID); err != nil {
		t.Fatalf("deleted before its lifetime: %v", err)
	}
	if err := h.mgr.sweep(ctx, time.Now().Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.mgr.Get(ctx, h.user.ID, ws.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("after its lifetime: %v, want not found", err)
	}
	if _, err := h.rt.Inspect(ctx, ws.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("sandbox after its lifetime: %v, want not found", err)
	}
	if _, err := h.mgr.Get(ctx, h.user.ID, keep.ID); err != nil {
		t.Fatalf("workspace without a lifetime: %v", err)
	}
	if err := h.mgr.Delete(ctx, h.user.ID, keep.ID); err != nil {
		t.Fatal(err)
	}
	h.wantNothingLeft(t)
}

func TestReconcile(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	running, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	vanished, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.rt.Remove(ctx, vanished.ID); err != nil {
		t.Fatal(err)
	}
	// The server believed this one stopped; it is in fact running.
	if err := h.db.SetWorkspaceState(ctx, running.ID, StateStopped, ""); err != nil {
		t.Fatal(err)
	}
	orphan := store.NewID("ws")
	if err := h.rt.Create(ctx, runtime.Spec{ID: orphan, Policy: mustResolve(t, h.mgr.policy)}); err != nil {
		t.Fatal(err)
	}
	if err := h.rt.Start(ctx, orphan); err != nil {
		t.Fatal(err)
	}

	// A restart: a new manager on the same database and runtime.
	mgr := New(h.cfg)
	if err := mgr.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	h.mgr = mgr
	if s := h.state(t, running.ID); s != StateRunning {
		t.Errorf("running workspace is %s after reconcile, want running", s)
	}
	if res := h.run(t, running.ID, "echo ok"); res.Stdout != "ok\n" {
		t.Errorf("adopted workspace: %+v", res)
	}
	w, err := mgr.Get(ctx, h.user.ID, vanished.ID)
	if err != nil || w.State != StateError || w.Error == "" {
		t.Errorf("vanished workspace: %+v, %v; want state error with a message", w, err)
	}
	if _, err := h.rt.Inspect(ctx, orphan); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("orphan sandbox after reconcile: %v, want not found", err)
	}
	// A vanished workspace can still be deleted.
	if err := mgr.Delete(ctx, h.user.ID, vanished.ID); err != nil {
		t.Fatal(err)
	}
}

func mustResolve(t *testing.T, c policy.Config) policy.Policy {
	t.Helper()
	p, err := c.Resolve(policy.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Pages of the store's maximum size still say whether another follows.
func TestListFullPages(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	now := time.Now().UTC()
	n := store.MaxPageSize + 1
	// Rows only: listing reads the store, and a thousand sandboxes would
	// make the test slow without making it truer.
	for i := 0; i < n; i++ {
		row := store.Workspace{ID: store.NewID("ws"), UserID: h.user.ID, Runtime: h.rt.Name(), State: StateStopped,
			Spec: []byte(`{"policy":{}}`), CreatedAt: now, UpdatedAt: now, LastUsedAt: now}
		if err := h.db.CreateWorkspace(ctx, row); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		rows, _ := h.db.AllWorkspaces(ctx)
		for _, r := range rows {
			_ = h.db.DeleteWorkspace(ctx, r.ID)
		}
	}()
	for _, limit := range []int{store.MaxPageSize, 7, n} {
		seen, after := 0, ""
		for pages := 0; ; pages++ {
			list, next, err := h.mgr.List(ctx, h.user.ID, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			seen += len(list)
			if next == "" {
				break
			}
			after = next
			if pages > n {
				t.Fatal("pagination does not end")
			}
		}
		if seen != n {
			t.Errorf("limit %d: paged through %d of %d workspaces", limit, seen, n)
		}
	}
}

// Idle stops racing with commands being started never make a command fail:
// a command either keeps its workspace running or starts it again.
func TestIdleStopRacingExec(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	ws, err := h.mgr.Create(ctx, h.user, Spec{Limits: policy.Limits{IdleTimeout: policy.Duration(time.Second)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	swept := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				swept <- nil
				return
			default:
			}
			h.mgr.flushUsed(ctx)
			// Everything looks idle from an hour ahead.
			if err := h.mgr.sweep(ctx, time.Now().Add(time.Hour)); err != nil {
				swept <- err
				return
			}
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	n := 0
	for time.Now().Before(deadline) {
		n++
		res, err := h.mgr.Execute(ctx, h.user, ws.ID, ExecuteRequest{Command: Command{Argv: []string{"true"}}})
		if err != nil || res.ExitCode != 0 {
			close(stop)
			<-swept
			t.Fatalf("command %d: %+v, %v", n, res, err)
		}
	}
	close(stop)
	if err := <-swept; err != nil {
		t.Fatalf("sweep: %v", err)
	}
}

// One workspace the sweep cannot handle does not keep the others from being
// stopped when idle.
func TestSweepGoesOnPastAFailure(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	spec := Spec{Limits: policy.Limits{IdleTimeout: policy.Duration(time.Second)}}
	broken, err := h.mgr.Create(ctx, h.user, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	idle, err := h.mgr.Create(ctx, h.user, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if idle.ID < broken.ID { // the sweep meets the broken one first
		idle, broken = broken, idle
	}
	// The sandbox goes away behind the server's back.
	if err := h.rt.Remove(ctx, broken.ID); err != nil {
		t.Fatal(err)
	}
	_ = h.mgr.sweep(ctx, time.Now().Add(time.Hour))
	if s := h.state(t, idle.ID); s != StateStopped {
		t.Errorf("idle workspace after the sweep: %s, want stopped", s)
	}
	if s := h.state(t, broken.ID); s != StateError {
		t.Errorf("workspace whose sandbox vanished: %s, want error", s)
	}
}

// A create the runtime itself refuses (here a CPU share too small for the
// cgroup, which the policy layer lets through today) leaves nothing.
func TestCreateRuntimeFailureLeavesNothing(t *testing.T) {
	h := newProcess(t)
	_, err := h.mgr.Create(context.Background(), h.user, Spec{
		Limits:  policy.Limits{CPUs: 0.0001},
		Network: policy.Network{Mode: policy.NetworkAllowlist, AllowedHosts: []string{"example.com"}},
	}, nil)
	if err == nil {
		t.Skip("the runtime accepted a tiny CPU share; nothing failed")
	}
	t.Logf("create: %v", err)
	h.wantNothingLeft(t)
}
