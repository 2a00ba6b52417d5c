package store

import (
	"database/sql"
	"time"
)

// Hooks for store_test, which tests the package from the outside.

// SetNow replaces the store's clock.
func SetNow(db *DB, now func() time.Time) { db.now = now }

// RawSQL exposes the pool, for checks no method offers (triggers, pragmas).
func RawSQL(db *DB) *sql.DB { return db.sql }

// NewIDAt is NewID at a chosen time.
func NewIDAt(prefix string, t time.Time) string { return newIDAt(prefix, t) }
