// Package store is Corral's state: users, API keys, workspaces, exec records
// and the audit log, kept in one SQLite file through modernc.org/sqlite (pure
// Go, no cgo).
//
// The schema lives in migrations/NNNN_name.sql, embedded in the binary and
// applied in order at Open, each in its own transaction; the version reached is
// kept in PRAGMA user_version. Adding a table means adding the next numbered
// file and the Go methods that use it, nothing else. Migrations run with
// foreign keys on, and SQLite ignores PRAGMA foreign_keys inside a
// transaction, so a migration cannot switch them off: dropping a table that
// others reference with ON DELETE CASCADE deletes their rows. Prefer ALTER
// TABLE … ADD COLUMN and new tables to rebuilding referenced ones.
//
// Timestamps are stored as INTEGER unix milliseconds (UTC), so every time.Time
// the store returns is UTC with millisecond precision. IDs come from NewID and
// sort by creation time.
//
// Errors are classed with errdefs: ErrNotFound, ErrAlreadyExists,
// ErrInvalidArgument, ErrConflict, ErrUnauthenticated, ErrFailedPrecondition
// and ErrUnavailable (the database could not be reached or stayed locked past
// the busy timeout). Test them with errors.Is.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/corralhq/corral/errdefs"
)

// Page sizes for the List methods.
const (
	DefaultPageSize = 100  // used when a List method is given limit <= 0
	MaxPageSize     = 1000 // larger limits are clamped to this
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// DB is an open Corral database. It is safe for concurrent use; writers are
// serialised by SQLite (BEGIN IMMEDIATE plus a 5 s busy timeout), so callers
// never see SQLITE_BUSY under normal contention.
type DB struct {
	sql      *sql.DB
	authStmt *sql.Stmt // keyByHashQuery
	// The hot path of every command: prepared once, not parsed per call.
	getWorkspaceStmt *sql.Stmt
	recordExecStmt   *sql.Stmt
	path             string
	// now is the clock; tests replace it to step over time-based rules such
	// as the once-a-minute last_used_at update.
	now func() time.Time
}

// maxOpenConns bounds the store's connection pool.
const maxOpenConns = 32

// Open opens the database at path, creating the file (mode 0600) and its
// parent directory (mode 0700) if needed, and applies every migration the file
// has not seen yet. Opening the same file again, from this or another
// process, is safe: migrations run under a write lock and are applied once.
//
// Errors: ErrInvalidArgument for an empty path; ErrFailedPrecondition if the
// file was migrated by a newer Corral than this one or is not a database;
// otherwise the underlying I/O or SQLite error, wrapped.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" {
		return nil, errdefs.Invalid("invalid_path", "store: empty database path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store: resolve %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("store: create directory for %s: %w", abs, err)
	}
	// Create the file ourselves so that it, and the -wal and -shm files that
	// SQLite gives the same mode, are readable by the owner only: they hold
	// key hashes and user data.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", abs, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("store: create %s: %w", abs, err)
	}

	sqldb, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	// Every connection costs a page cache, a round of pragmas and three
	// descriptors (database, WAL, shared memory). The pool is bounded: SQLite
	// runs one writer at a time, so a burst of clients waits here (in
	// order) rather than in SQLite's busy loop with a connection each, and
	// the connections a burst opened are closed once idle for a while.
	// A few stay open so the hot paths (Authenticate) do not reopen them.
	// No store method holds two connections at once, so the bound cannot
	// deadlock.
	sqldb.SetMaxOpenConns(maxOpenConns)
	sqldb.SetMaxIdleConns(4)
	sqldb.SetConnMaxIdleTime(time.Minute)

	db := &DB{sql: sqldb, path: abs, now: time.Now}
	if err := db.migrate(ctx); err != nil {
		sqldb.Close()
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	for _, p := range []struct {
		stmt  **sql.Stmt
		query string
	}{
		{&db.authStmt, keyByHashQuery},
		{&db.getWorkspaceStmt, getWorkspaceQuery},
		{&db.recordExecStmt, recordExecQuery},
	} {
		if *p.stmt, err = sqldb.PrepareContext(ctx, p.query); err != nil {
			sqldb.Close()
			return nil, fmt.Errorf("store: open %s: prepare: %w", abs, classify(err))
		}
	}
	return db, nil
}

// dsn is the data source name ENGINES.md measured: every pooled connection
// gets WAL, foreign keys, the busy timeout, and BEGIN IMMEDIATE for explicit
// transactions (a deferred transaction that later writes can fail with
// SQLITE_BUSY without waiting). SQLite decodes %HH in file: URIs, so the
// characters that would end the path are escaped.
func dsn(path string) string {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	return "file:" + esc + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)" +
		"&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

// Close closes the database. Outstanding queries fail; calling Close twice
// returns nil the second time.
func (db *DB) Close() error {
	db.authStmt.Close()
	if err := db.sql.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", db.path, err)
	}
	return nil
}

// Path returns the absolute path of the database file.
func (db *DB) Path() string { return db.path }

// Ping checks that the database file can be read. It returns an error of
// class ErrUnavailable if not.
func (db *DB) Ping(ctx context.Context) error {
	var v int
	if err := db.sql.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("store: ping %s: %w: %w", db.path, errdefs.ErrUnavailable, err)
	}
	return nil
}

// SchemaVersion returns the number of the last migration applied to the file.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	if err := db.sql.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("store: read schema version: %w", classify(err))
	}
	return v, nil
}

// migration is one embedded migrations/NNNN_name.sql file.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations sorted by version. The versions
// must run 1, 2, 3… without gaps or duplicates; anything else is a build
// mistake and is reported as such.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || len(num) != 4 || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("migration file %q: want NNNN_name.sql", name)
		}
		body, err := migrationFiles.ReadFile("migrations/" + name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %04d (versions must run 1, 2, 3… without gaps)", m.name, i+1)
		}
	}
	return ms, nil
}

// migrate applies the pending migrations, each in its own IMMEDIATE
// transaction that re-reads user_version under the write lock, so concurrent
// openers of one file apply every migration exactly once.
func (db *DB) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	for _, m := range ms {
		err := db.tx(ctx, func(tx *sql.Tx) error {
			var cur int
			if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&cur); err != nil {
				return fmt.Errorf("read schema version: %w", err)
			}
			if cur > len(ms) {
				return fmt.Errorf("%w: database schema version %d is newer than this corral's (%d)",
					errdefs.ErrFailedPrecondition, cur, len(ms))
			}
			if cur >= m.version {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("apply migration %s: %w", m.name, err)
			}
			// PRAGMA takes no bound parameters; the version is our own integer.
			if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", m.version)); err != nil {
				return fmt.Errorf("record migration %s: %w", m.name, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// tx runs fn in a transaction (BEGIN IMMEDIATE, from the DSN) and commits if
// fn returns nil. The error is classed by classify.
func (db *DB) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", classify(err))
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return classify(err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", classify(err))
	}
	return nil
}

// classify adds an errdefs class to SQLite errors that have an obvious one.
// Errors that already carry a class, and context errors, are returned as is.
func classify(err error) error {
	if err == nil || hasClass(err) {
		return err
	}
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch code := se.Code(); {
	case code == sqlite3.SQLITE_CONSTRAINT_UNIQUE || code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return fmt.Errorf("%w: %w", errdefs.ErrAlreadyExists, err)
	case code == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case code&0xff == sqlite3.SQLITE_BUSY || code&0xff == sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
	case code&0xff == sqlite3.SQLITE_NOTADB || code&0xff == sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	case code&0xff == sqlite3.SQLITE_FULL:
		// The disk is full: the API answers 507, as for a full workspace.
		return fmt.Errorf("%w: %w", errdefs.ErrInsufficientStorage, err)
	}
	return err
}

var allClasses = []error{
	errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrInvalidArgument,
	errdefs.ErrConflict, errdefs.ErrFailedPrecondition, errdefs.ErrNotImplemented,
	errdefs.ErrUnauthenticated, errdefs.ErrTooLarge, errdefs.ErrUnavailable,
	errdefs.ErrInsufficientStorage,
}

func hasClass(err error) bool {
	for _, c := range allClasses {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

// clampLimit applies DefaultPageSize and MaxPageSize.
func clampLimit(limit int) int {
	switch {
	case limit <= 0:
		return DefaultPageSize
	case limit > MaxPageSize:
		return MaxPageSize
	}
	return limit
}

// Timestamps are unix milliseconds in the database.

func toMS(t time.Time) int64 { return t.UnixMilli() }

func fromMS(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func fromNullMS(ms sql.NullInt64) *time.Time {
	if !ms.Valid {
		return nil
	}
	t := fromMS(ms.Int64)
	return &t
}

// nowTime is the store's clock, truncated to what the database keeps.
func (db *DB) nowTime() time.Time { return fromMS(toMS(db.now())) }
