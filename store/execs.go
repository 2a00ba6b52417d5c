package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// ExecRecord is the history entry of one command run in a workspace.
type ExecRecord struct {
	ID, WorkspaceID, UserID string
	Argv                    []string
	ExitCode                int
	Signal                  string
	TimedOut, OOMKilled     bool
	DurationMS              int64
	StartedAt               time.Time
}

const recordExecQuery = `INSERT INTO execs (id, workspace_id, user_id, argv, exit_code, signal, timed_out, oom_killed, duration_ms, started_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// RecordExec stores an exec record. An empty ID is replaced by NewID("exec")
// and a zero StartedAt by now; the caller's r is not modified. Errors:
// ErrInvalidArgument without WorkspaceID, UserID or Argv; ErrNotFound if the
// workspace or user does not exist (a workspace deleted while its command
// ran, say); ErrAlreadyExists for a duplicate ID.
func (db *DB) RecordExec(ctx context.Context, r ExecRecord) error {
	switch {
	case r.WorkspaceID == "":
		return errdefs.Invalid("invalid_exec", "record exec: empty workspace ID")
	case r.UserID == "":
		return errdefs.Invalid("invalid_exec", "record exec in workspace %s: empty user ID", r.WorkspaceID)
	case len(r.Argv) == 0:
		return errdefs.Invalid("invalid_exec", "record exec in workspace %s: empty argv", r.WorkspaceID)
	}
	if r.ID == "" {
		r.ID = NewID("exec")
	}
	if r.StartedAt.IsZero() {
		r.StartedAt = db.now()
	}
	argv, err := json.Marshal(r.Argv)
	if err != nil {
		return fmt.Errorf("record exec %s: encode argv: %w", r.ID, err)
	}
	_, err = db.recordExecStmt.ExecContext(ctx,
		r.ID, r.WorkspaceID, r.UserID, string(argv), r.ExitCode, r.Signal, r.TimedOut, r.OOMKilled,
		r.DurationMS, toMS(r.StartedAt))
	if err != nil {
		err = classify(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("record exec %s: workspace %s or user %s: %w", r.ID, r.WorkspaceID, r.UserID, err)
		}
		return fmt.Errorf("record exec %s: %w", r.ID, err)
	}
	return nil
}

// ListExecs returns the workspace's most recent exec records, newest first,
// at most limit of them (limit <= 0 means DefaultPageSize; more than
// MaxPageSize is clamped). A missing workspace has no records.
func (db *DB) ListExecs(ctx context.Context, workspaceID string, limit int) ([]ExecRecord, error) {
	rows, err := db.sql.QueryContext(ctx,
		`SELECT id, workspace_id, user_id, argv, exit_code, signal, timed_out, oom_killed, duration_ms, started_at
		 FROM execs WHERE workspace_id = ? ORDER BY started_at DESC, id DESC LIMIT ?`,
		workspaceID, clampLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("list execs of workspace %s: %w", workspaceID, classify(err))
	}
	defer rows.Close()
	rs := []ExecRecord{}
	for rows.Next() {
		var r ExecRecord
		var argv string
		var started int64
		if err := rows.Scan(&r.ID, &r.WorkspaceID, &r.UserID, &argv, &r.ExitCode, &r.Signal,
			&r.TimedOut, &r.OOMKilled, &r.DurationMS, &started); err != nil {
			return nil, fmt.Errorf("list execs of workspace %s: %w", workspaceID, classify(err))
		}
		if err := json.Unmarshal([]byte(argv), &r.Argv); err != nil {
			return nil, fmt.Errorf("list execs of workspace %s: decode argv of %s: %w", workspaceID, r.ID, err)
		}
		r.StartedAt = fromMS(started)
		rs = append(rs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list execs of workspace %s: %w", workspaceID, classify(err))
	}
	return rs, nil
}
