package workspace

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// Reconcile makes the store and the runtime agree after a start-up: sandboxes
// the store does not know are removed, workspaces whose sandbox vanished are
// marked as errored, running ones are adopted (their egress proxies
// reopened), and half-created or half-deleted ones are finished off. Only a
// failure to list sandboxes or workspaces is returned: a workspace that
// cannot be put right is logged and marked errored (an orphan that cannot be
// removed is logged), so that one bad sandbox never keeps the server down.
func (m *Manager) Reconcile(ctx context.Context) error {
	live, err := m.rt.List(ctx)
	if err != nil {
		return fmt.Errorf("list %s sandboxes: %w", m.rt.Name(), err)
	}
	byID := make(map[string]runtime.Status, len(live))
	for _, s := range live {
		byID[s.ID] = s
	}
	rows, err := m.db.AllWorkspaces(ctx)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(rows))
	for _, row := range rows {
		known[row.ID] = true
		if row.Runtime != m.rt.Name() {
			continue // another runtime's; left alone
		}
		if !m.flagUndecodable(ctx, row) {
			continue
		}
		s, exists := byID[row.ID]
		if err := m.reconcileOne(ctx, row, s, exists); err != nil {
			m.log.Error("reconcile workspace", "workspace_id", row.ID, "error", err)
			if serr := m.db.SetWorkspaceState(ctx, row.ID, StateError, "could not be recovered after a restart"); serr != nil {
				m.log.Error("mark workspace errored", "workspace_id", row.ID, "error", serr)
			}
		}
	}
	for _, s := range live {
		if !known[s.ID] {
			m.log.Warn("removing orphaned sandbox", "workspace_id", s.ID)
			if err := m.rt.Remove(ctx, s.ID); err != nil {
				m.log.Error("remove orphaned sandbox", "workspace_id", s.ID, "error", err)
			}
		}
	}
	// What a create or delete cut off by a crash left that List does not
	// show (a directory without metadata, a volume without a container).
	// Rows still present were put right above; removed rows are gone.
	if ll, ok := m.rt.(runtime.LeftoverLister); ok {
		ids, err := ll.Leftovers(ctx)
		if err != nil {
			return fmt.Errorf("list %s leftovers: %w", m.rt.Name(), err)
		}
		for _, id := range ids {
			if _, err := m.db.Workspace(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
				continue
			}
			m.log.Warn("removing leftovers of an interrupted create or delete", "workspace_id", id)
			if err := m.rt.Remove(ctx, id); err != nil {
				m.log.Error("remove leftovers", "workspace_id", id, "error", err)
			}
		}
	}
	return nil
}

// reconcileOne puts one stored workspace right with its sandbox s (exists
// is false if the runtime has none).
func (m *Manager) reconcileOne(ctx context.Context, row store.Workspace, s runtime.Status, exists bool) error {
	log := m.log.With("workspace_id", row.ID)
	switch {
	case row.State == StateCreating || row.State == StateDeleting:
		log.Info("finishing interrupted create/delete", "state", row.State)
		return m.destroy(ctx, row.ID)
	case !exists:
		if row.State == StateError {
			return nil
		}
		log.Warn("sandbox vanished while the server was down")
		return m.db.SetWorkspaceState(ctx, row.ID, StateError, "sandbox vanished while the server was down")
	}
	st, err := decode(row)
	if err != nil {
		return err
	}
	if st.Policy.Network.Mode == policy.NetworkAllowlist && m.proxy != nil {
		if _, err := m.proxy.Open(row.ID, st.Policy.Network.AllowedHosts); err != nil {
			return fmt.Errorf("reopen egress proxy: %w", err)
		}
	}
	state := StateStopped
	if s.State == runtime.StateRunning {
		state = StateRunning
		log.Info("adopted running workspace")
	}
	if state == row.State {
		return nil
	}
	return m.db.SetWorkspaceState(ctx, row.ID, state, "")
}

// Run stops workspaces that have been idle longer than their idle timeout,
// deletes those past their lifetime, and saves last-use times, every tick,
// until ctx is done.
func (m *Manager) Run(ctx context.Context, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.flushUsed(context.WithoutCancel(ctx))
			return
		case <-t.C:
			m.flushUsed(ctx)
			if err := m.sweep(ctx, time.Now()); err != nil && ctx.Err() == nil {
				m.log.Error("idle sweep", "error", err)
			}
		}
	}
}

func (m *Manager) flushUsed(ctx context.Context) {
	m.mu.Lock()
	used := m.used
	m.used = map[string]time.Time{}
	m.mu.Unlock()
	for id, at := range used {
		if err := m.db.TouchWorkspace(ctx, id, at.UTC()); err != nil {
			m.log.Debug("touch workspace", "workspace_id", id, "error", err)
		}
	}
}

// sweep stops idle workspaces and deletes expired ones. A workspace that
// fails does not hold up the others: their errors are returned together.
func (m *Manager) sweep(ctx context.Context, now time.Time) error {
	rows, err := m.db.AllWorkspaces(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, row := range rows {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if row.Runtime != m.rt.Name() {
			continue
		}
		st, err := decode(row)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l := st.Policy.Limits
		if l.Lifetime > 0 && now.Sub(row.CreatedAt) > time.Duration(l.Lifetime) && row.State != StateDeleting {
			m.log.Info("workspace reached its lifetime; deleting", "workspace_id", row.ID)
			if err := m.Delete(ctx, row.UserID, row.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		if row.State != StateRunning || l.IdleTimeout <= 0 || now.Sub(row.LastUsedAt) < time.Duration(l.IdleTimeout) {
			continue
		}
		if err := m.stopIdle(ctx, row.ID, time.Duration(l.IdleTimeout)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) stopIdle(ctx context.Context, id string, idle time.Duration) error {
	unlock := m.lock(id)
	defer unlock()
	m.mu.Lock()
	busy, last := m.busy[id] > 0, m.used[id]
	m.mu.Unlock()
	if busy || time.Since(last) < idle {
		return nil
	}
	// It may have been deleted or stopped since the sweep read it.
	row, err := m.db.Workspace(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) || (err == nil && row.State != StateRunning) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.rt.Stop(ctx, id); errors.Is(err, errdefs.ErrNotFound) {
		m.log.Warn("sandbox of running workspace vanished", "workspace_id", id)
		return m.db.SetWorkspaceState(ctx, id, StateError, "sandbox vanished")
	} else if err != nil {
		return fmt.Errorf("stop idle workspace %s: %w", id, err)
	}
	m.log.Info("stopped idle workspace", "workspace_id", id)
	return m.db.SetWorkspaceState(ctx, id, StateStopped, "")
}
