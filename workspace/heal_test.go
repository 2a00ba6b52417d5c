package workspace

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// killSupervisor kills a process workspace's supervisor with SIGKILL, as
// the OOM killer or an operator would, and waits until the runtime sees it
// dead. It returns the workspace's host directory.
func (h *harness) killSupervisor(t *testing.T, id string) string {
	t.Helper()
	ctx := context.Background()
	st, err := h.rt.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(st.Detail["pid"])
	if err != nil || st.State != runtime.StateRunning {
		t.Fatalf("workspace %s is not running: %+v", id, st)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		st, err := h.rt.Inspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != runtime.StateRunning {
			return st.Detail["dir"]
		}
		if i == 1000 {
			t.Fatalf("supervisor %d of %s still alive after SIGKILL", pid, id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDeadSandboxRestartedOnUse(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	w, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.run(t, w.ID, "echo kept > f")
	h.killSupervisor(t, w.ID)
	if res := h.run(t, w.ID, "cat f"); res.ExitCode != 0 || res.Stdout != "kept\n" {
		t.Fatalf("exec after the supervisor died: %+v", res)
	}
	if s := h.state(t, w.ID); s != StateRunning {
		t.Errorf("state %s, want running", s)
	}
}

func TestDeadSandboxRestartedByCheck(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	w, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.run(t, w.ID, "echo kept > f")
	h.killSupervisor(t, w.ID)
	if err := h.mgr.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := h.rt.Inspect(ctx, w.ID); err != nil || st.State != runtime.StateRunning {
		t.Fatalf("after Check: %+v, %v; want the sandbox running again", st, err)
	}
	if res := h.run(t, w.ID, "cat f"); res.Stdout != "kept\n" {
		t.Fatalf("files after the restart: %+v", res)
	}
}

func TestDeadSandboxThatCannotRestartIsError(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	w, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	home := h.killSupervisor(t, w.ID)
	// Its files are gone: the supervisor cannot start in them. (Home may
	// be its disk's mount point, with the default disk cap: detach it.)
	if err := unix.Unmount(home, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		t.Fatal(err)
	}
	if err := os.RemoveAll(home); err != nil {
		t.Fatal(err)
	}
	_, err = h.mgr.Execute(ctx, h.user, w.ID, ExecuteRequest{Command: Command{Command: "true"}})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "workspace_error" {
		t.Fatalf("exec in a sandbox that cannot restart: %v (code %q), want workspace_error", err, errdefs.Code(err))
	}
	got, err := h.mgr.Get(ctx, h.user.ID, w.ID)
	if err != nil || got.State != StateError || got.Error != reasonRestartFailed {
		t.Fatalf("GET: %+v, %v; want state error with the reason", got, err)
	}
	// Check leaves it so, and it can be deleted.
	if err := h.mgr.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.mgr.Delete(ctx, h.user.ID, w.ID); err != nil {
		t.Fatal(err)
	}
	h.wantNothingLeft(t)
}

// TestCrashRepair starts a manager on what a server killed mid-way leaves:
// a row in creating with its sandbox half made, a row in deleting with its
// sandbox still there, and the directory of a workspace whose row was
// deleted but whose removal was cut off after its metadata went.
func TestCrashRepair(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	pol := mustResolve(t, h.mgr.policy)
	raw, err := json.Marshal(stored{Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	creating := store.Workspace{ID: store.NewID("ws"), UserID: h.user.ID, Runtime: h.rt.Name(), State: StateCreating,
		Spec: raw, CreatedAt: now, UpdatedAt: now, LastUsedAt: now}
	if err := h.db.CreateWorkspace(ctx, creating); err != nil {
		t.Fatal(err)
	}
	if err := h.rt.Create(ctx, runtime.Spec{ID: creating.ID, Policy: pol}); err != nil {
		t.Fatal(err)
	}
	deleting, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.db.SetWorkspaceState(ctx, deleting.ID, StateDeleting, ""); err != nil {
		t.Fatal(err)
	}
	half := store.NewID("ws")
	if err := h.rt.Create(ctx, runtime.Spec{ID: half, Policy: pol}); err != nil {
		t.Fatal(err)
	}
	if err := h.rt.Start(ctx, half); err != nil {
		t.Fatal(err)
	}
	st, err := h.rt.Inspect(ctx, half)
	if err != nil {
		t.Fatal(err)
	}
	halfDir := filepath.Dir(st.Detail["dir"])
	if err := h.rt.Stop(ctx, half); err != nil {
		t.Fatal(err)
	}
	// Remove takes meta.json away first; a crash right after leaves this.
	if err := os.Remove(filepath.Join(halfDir, "meta.json")); err != nil {
		t.Fatal(err)
	}

	mgr := New(h.cfg)
	if err := mgr.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	h.mgr = mgr
	if _, err := os.Stat(halfDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory of a cut-off removal: %v, want it gone", err)
	}
	h.wantNothingLeft(t)
}

// TestCheckFinishesFailedRemoval: a row a failed create or delete left in
// deleting (the runtime could not remove its sandbox then) is removed by
// the periodic check once the runtime can.
func TestCheckFinishesFailedRemoval(t *testing.T) {
	h := newProcess(t)
	ctx := context.Background()
	w, err := h.mgr.Create(ctx, h.user, Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.db.SetWorkspaceState(ctx, w.ID, StateDeleting, reasonDeleting); err != nil {
		t.Fatal(err)
	}
	if err := h.mgr.Check(ctx); err != nil {
		t.Fatal(err)
	}
	h.wantNothingLeft(t)
}
