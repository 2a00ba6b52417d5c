package workspace

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// DefaultCheckInterval is how often Watch looks for sandboxes that died.
const DefaultCheckInterval = 15 * time.Second

// Reasons shown to clients (GET /workspaces/{id}, "error") for a workspace
// that self-healing could not put right.
const (
	reasonVanished      = "the workspace's sandbox vanished; its files may be gone. Delete it and create a new one"
	reasonRestartFailed = "the workspace's sandbox died and could not be restarted; delete it and create a new one"
	reasonDeleting      = "deletion did not finish; the server retries it"
)

// heal restarts a workspace the store says is running but whose sandbox
// is not, with its files. It returns nil if the sandbox runs (again), the
// engine's error if the engine cannot be asked (nothing is changed then),
// and otherwise marks the workspace StateError with a reason a client can
// read and returns errdefs.ErrFailedPrecondition coded "workspace_error".
// Callers must not hold the workspace's lock.
func (m *Manager) heal(ctx context.Context, id string) error {
	unlock := m.lock(id)
	defer unlock()
	row, err := m.db.Workspace(ctx, id)
	if err != nil {
		return err
	}
	if row.State != StateRunning {
		return nil // stopped, deleted or errored since: not ours to heal
	}
	log := m.log.With("workspace_id", id)
	st, err := m.rt.Inspect(ctx, id)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		log.Error("sandbox of a running workspace vanished")
		return m.markError(ctx, id, reasonVanished)
	case err != nil:
		return fmt.Errorf("inspect workspace %s: %w", id, err)
	case st.State == runtime.StateRunning:
		return nil
	}
	log.Warn("sandbox of a running workspace died; restarting it", "sandbox_state", st.State)
	// Stop first: it clears what the dead sandbox left (processes that
	// outlived their supervisor, stale sockets) and is idempotent.
	err = m.rt.Stop(ctx, id)
	if err == nil {
		err = m.rt.Start(ctx, id)
	}
	if errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("restart workspace %s: %w", id, err)
	}
	if err != nil {
		log.Error("restart dead sandbox", "error", err)
		return m.markError(ctx, id, reasonRestartFailed)
	}
	log.Info("restarted dead sandbox")
	return nil
}

func (m *Manager) markError(ctx context.Context, id, reason string) error {
	if err := m.db.SetWorkspaceState(context.WithoutCancel(ctx), id, StateError, reason); err != nil {
		return err
	}
	return errdefs.New(errdefs.ErrFailedPrecondition, "workspace_error", "workspace %s: %s", id, reason)
}

// Check looks once at every workspace of this runtime: a running one whose
// sandbox died is restarted (or marked errored, see heal), and one left in
// creating or deleting by a create or delete that failed half-way is
// removed. An engine that does not answer changes nothing; the next check
// tries again.
func (m *Manager) Check(ctx context.Context) error {
	live, err := m.rt.List(ctx)
	if err != nil {
		return fmt.Errorf("list %s sandboxes: %w", m.rt.Name(), err)
	}
	running := make(map[string]bool, len(live))
	for _, s := range live {
		running[s.ID] = s.State == runtime.StateRunning
	}
	rows, err := m.db.AllWorkspaces(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, row := range rows {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if row.Runtime != m.rt.Name() || m.isPending(row.ID) {
			continue
		}
		switch {
		case row.State == StateRunning && !running[row.ID]:
			if err := m.heal(ctx, row.ID); err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
				errs = append(errs, err)
			}
		case row.State == StateCreating || row.State == StateDeleting:
			if err := m.finishRemoval(ctx, row); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// finishRemoval removes a workspace whose create failed or whose delete
// did not finish, unless a create or delete of it is under way here.
func (m *Manager) finishRemoval(ctx context.Context, row store.Workspace) error {
	if !m.setPending(row.ID) {
		return nil
	}
	defer m.clearPending(row.ID)
	unlock := m.lock(row.ID)
	defer unlock()
	m.log.Info("removing a workspace a failed create or delete left behind", "workspace_id", row.ID, "state", row.State)
	if err := m.destroy(ctx, row.ID); err != nil {
		return fmt.Errorf("finish removal of %s: %w", row.ID, err)
	}
	return nil
}

// Watch runs Check every interval until ctx is done.
func (m *Manager) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultCheckInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.Check(ctx); err != nil && ctx.Err() == nil {
				if errors.Is(err, errdefs.ErrUnavailable) {
					m.log.Warn("workspace check: engine unavailable", "error", err)
				} else {
					m.log.Error("workspace check", "error", err)
				}
			}
		}
	}
}

// setPending marks a create or delete of id as under way in this process,
// so that Check leaves its row alone; false if one already is.
func (m *Manager) setPending(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending[id] {
		return false
	}
	m.pending[id] = true
	return true
}

func (m *Manager) clearPending(id string) {
	m.mu.Lock()
	delete(m.pending, id)
	m.mu.Unlock()
}

func (m *Manager) isPending(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending[id]
}
