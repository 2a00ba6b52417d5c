package store

import (
	"context"
	"fmt"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// AuditRecord is one entry of the audit log. Seq grows with every record.
type AuditRecord struct {
	Seq                            int64
	At                             time.Time
	UserID, Action, Target, Detail string
}

// Audit appends a record to the audit log: who (userID, empty for the server
// itself) did what (action, e.g. "workspace.create") to what (target, e.g. a
// workspace ID), with free-form detail. Records cannot be changed or deleted
// afterwards, not even through SQL (triggers refuse it). Never put secrets in
// detail. Errors: ErrInvalidArgument for an empty action. Not idempotent.
func (db *DB) Audit(ctx context.Context, userID, action, target, detail string) error {
	if action == "" {
		return errdefs.Invalid("invalid_audit", "audit: empty action")
	}
	_, err := db.sql.ExecContext(ctx,
		"INSERT INTO audit (at, user_id, action, target, detail) VALUES (?, ?, ?, ?, ?)",
		toMS(db.now()), userID, action, target, detail)
	if err != nil {
		return fmt.Errorf("audit %s %s: %w", action, target, classify(err))
	}
	return nil
}

// AuditLog returns audit records with Seq greater than after, oldest first,
// at most limit of them (limit <= 0 means DefaultPageSize; more than
// MaxPageSize is clamped). userID "" means every user's records.
func (db *DB) AuditLog(ctx context.Context, userID string, after int64, limit int) ([]AuditRecord, error) {
	q := "SELECT seq, at, user_id, action, target, detail FROM audit WHERE seq > ?"
	args := []any{after}
	if userID != "" {
		q += " AND user_id = ?"
		args = append(args, userID)
	}
	q += " ORDER BY seq LIMIT ?"
	args = append(args, clampLimit(limit))
	rows, err := db.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", classify(err))
	}
	defer rows.Close()
	recs := []AuditRecord{}
	for rows.Next() {
		var r AuditRecord
		var at int64
		if err := rows.Scan(&r.Seq, &at, &r.UserID, &r.Action, &r.Target, &r.Detail); err != nil {
			return nil, fmt.Errorf("read audit log: %w", classify(err))
		}
		r.At = fromMS(at)
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read audit log: %w", classify(err))
	}
	return recs, nil
}
