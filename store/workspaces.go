package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// Workspace is the store's record of a workspace. State and Error are the
// server's vocabulary; the store keeps them as given.
type Workspace struct {
	ID, UserID, Runtime, Image, State, Error string
	Spec                                     json.RawMessage // the server's JSON of env+policy; opaque to store
	CreatedAt, UpdatedAt, LastUsedAt         time.Time
}

const workspaceColumns = "id, user_id, runtime, image, state, error, spec, created_at, updated_at, last_used_at FROM workspaces"

func scanWorkspace(r rowScanner) (Workspace, error) {
	var w Workspace
	var spec []byte
	var created, updated, lastUsed int64
	if err := r.Scan(&w.ID, &w.UserID, &w.Runtime, &w.Image, &w.State, &w.Error, &spec, &created, &updated, &lastUsed); err != nil {
		return Workspace{}, err
	}
	if spec != nil {
		w.Spec = json.RawMessage(spec)
	}
	w.CreatedAt, w.UpdatedAt, w.LastUsedAt = fromMS(created), fromMS(updated), fromMS(lastUsed)
	return w, nil
}

// CreateWorkspace stores a new workspace. ID, UserID and State are required;
// Spec, if not empty, must be valid JSON. A zero CreatedAt becomes now, and
// zero UpdatedAt and LastUsedAt become CreatedAt.
//
// Errors: ErrInvalidArgument for a missing field or bad Spec; ErrAlreadyExists
// if the ID is taken; ErrNotFound if the user does not exist. Not idempotent.
func (db *DB) CreateWorkspace(ctx context.Context, w Workspace) error {
	switch {
	case w.ID == "":
		return errdefs.Invalid("invalid_workspace", "create workspace: empty ID")
	case w.UserID == "":
		return errdefs.Invalid("invalid_workspace", "create workspace %s: empty user ID", w.ID)
	case w.State == "":
		return errdefs.Invalid("invalid_workspace", "create workspace %s: empty state", w.ID)
	case len(w.Spec) > 0 && !json.Valid(w.Spec):
		return errdefs.Invalid("invalid_workspace", "create workspace %s: spec is not valid JSON", w.ID)
	}
	if w.CreatedAt.IsZero() {
		w.CreatedAt = db.now()
	}
	if w.UpdatedAt.IsZero() {
		w.UpdatedAt = w.CreatedAt
	}
	if w.LastUsedAt.IsZero() {
		w.LastUsedAt = w.CreatedAt
	}
	var spec []byte
	if len(w.Spec) > 0 {
		spec = w.Spec
	}
	_, err := db.sql.ExecContext(ctx,
		`INSERT INTO workspaces (id, user_id, runtime, image, state, error, spec, created_at, updated_at, last_used_at)
		 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		w.ID, w.UserID, w.Runtime, w.Image, w.State, w.Error, spec,
		toMS(w.CreatedAt), toMS(w.UpdatedAt), toMS(w.LastUsedAt))
	if err != nil {
		err = classify(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("create workspace %s: user %s: %w", w.ID, w.UserID, err)
		}
		return fmt.Errorf("create workspace %s: %w", w.ID, err)
	}
	return nil
}

const getWorkspaceQuery = "SELECT " + workspaceColumns + " WHERE id = ? AND user_id = ?"

// GetWorkspace returns the workspace if userID owns it. Errors: ErrNotFound
// if it does not exist or belongs to someone else — the two are
// indistinguishable, so callers never reveal another user's workspace.
func (db *DB) GetWorkspace(ctx context.Context, userID, id string) (Workspace, error) {
	w, err := scanWorkspace(db.getWorkspaceStmt.QueryRowContext(ctx, id, userID))
	if errors.Is(err, sql.ErrNoRows) {
		return Workspace{}, errdefs.NotFound("workspace %s not found", id)
	}
	if err != nil {
		return Workspace{}, fmt.Errorf("get workspace %s: %w", id, classify(err))
	}
	return w, nil
}

// Workspace returns the workspace whoever owns it, for the server's own use
// (reconciliation, idle reaping); never answer a user with it without an
// ownership check. Errors: ErrNotFound.
func (db *DB) Workspace(ctx context.Context, id string) (Workspace, error) {
	w, err := scanWorkspace(db.sql.QueryRowContext(ctx,
		"SELECT "+workspaceColumns+" WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Workspace{}, errdefs.NotFound("workspace %s not found", id)
	}
	if err != nil {
		return Workspace{}, fmt.Errorf("get workspace %s: %w", id, classify(err))
	}
	return w, nil
}

// ListWorkspaces returns a page of the user's workspaces: those with an ID
// greater than after ("" for the first page), in ID order (which is creation
// order), at most limit of them. limit <= 0 means DefaultPageSize; more than
// MaxPageSize is clamped. The next page starts after the last ID returned; a
// page shorter than limit is the last.
func (db *DB) ListWorkspaces(ctx context.Context, userID, after string, limit int) ([]Workspace, error) {
	return db.listWorkspaces(ctx,
		"SELECT "+workspaceColumns+" WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?",
		userID, after, clampLimit(limit))
}

// AllWorkspaces returns every workspace of every user in ID order, for
// start-up reconciliation with the runtime.
func (db *DB) AllWorkspaces(ctx context.Context) ([]Workspace, error) {
	return db.listWorkspaces(ctx, "SELECT "+workspaceColumns+" ORDER BY id")
}

func (db *DB) listWorkspaces(ctx context.Context, q string, args ...any) ([]Workspace, error) {
	rows, err := db.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", classify(err))
	}
	defer rows.Close()
	ws := []Workspace{}
	for rows.Next() {
		w, err := scanWorkspace(rows)
		if err != nil {
			return nil, fmt.Errorf("list workspaces: %w", classify(err))
		}
		ws = append(ws, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list workspaces: %w", classify(err))
	}
	return ws, nil
}

// SetWorkspaceState sets the workspace's state and error message (empty for
// none) and bumps UpdatedAt. Idempotent. Errors: ErrInvalidArgument for an
// empty state; ErrNotFound.
func (db *DB) SetWorkspaceState(ctx context.Context, id, state, errMsg string) error {
	if state == "" {
		return errdefs.Invalid("invalid_workspace", "set state of workspace %s: empty state", id)
	}
	res, err := db.sql.ExecContext(ctx,
		"UPDATE workspaces SET state = ?, error = ?, updated_at = ? WHERE id = ?",
		state, errMsg, toMS(db.now()), id)
	return affectedOne(res, err, "set state of workspace %s", id)
}

// TouchWorkspace records that the workspace was used at the given time. It
// never moves LastUsedAt backwards, so out-of-order touches are harmless.
// One indexed UPDATE. Errors: ErrNotFound.
func (db *DB) TouchWorkspace(ctx context.Context, id string, at time.Time) error {
	res, err := db.sql.ExecContext(ctx,
		"UPDATE workspaces SET last_used_at = max(last_used_at, ?) WHERE id = ?",
		toMS(at), id)
	return affectedOne(res, err, "touch workspace %s", id)
}

// DeleteWorkspace deletes the workspace and, by cascade, its exec records
// (and whatever later tables hang off it). Idempotent: deleting a missing
// workspace succeeds.
func (db *DB) DeleteWorkspace(ctx context.Context, id string) error {
	if _, err := db.sql.ExecContext(ctx, "DELETE FROM workspaces WHERE id = ?", id); err != nil {
		return fmt.Errorf("delete workspace %s: %w", id, classify(err))
	}
	return nil
}

// affectedOne turns an UPDATE's result into nil, a classified error, or
// ErrNotFound when no row matched.
func affectedOne(res sql.Result, err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", what, classify(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", what, classify(err))
	}
	if n == 0 {
		return errdefs.NotFound("%s: not found", what)
	}
	return nil
}
