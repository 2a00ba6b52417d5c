package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
)

// storeOpen opens a fresh database in t.TempDir and closes it at the end.
func storeOpen(t testing.TB) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "corral.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func storeUser(t testing.TB, db *store.DB, name string) store.User {
	t.Helper()
	u, err := db.CreateUser(context.Background(), name)
	if err != nil {
		t.Fatalf("CreateUser(%q): %v", name, err)
	}
	return u
}

func storeWorkspace(t testing.TB, db *store.DB, userID string) store.Workspace {
	t.Helper()
	w := store.Workspace{
		ID: store.NewID("ws"), UserID: userID, Runtime: "process", Image: "busybox",
		State: "running", Spec: json.RawMessage(`{"env":{"A":"1"}}`),
	}
	if err := db.CreateWorkspace(context.Background(), w); err != nil {
		t.Fatalf("CreateWorkspace: %v", err)
	}
	return w
}

func wantClass(t *testing.T, what string, err, class error) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Fatalf("%s: got error %v, want class %v", what, err, class)
	}
}

// clock is a settable time source for store.SetNow.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time)     { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }
func (c *clock) add(d time.Duration) { c.set(c.now().Add(d)) }

func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := filepath.Glob("migrations/[0-9][0-9][0-9][0-9]_*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migration files found: %v", err)
	}
	return len(files)
}

func TestOpenCreatesPrivateFileAndAppliesMigrations(t *testing.T) {
	ctx := context.Background()
	// Characters that mean something in a file: URI must still name a file.
	dir := filepath.Join(t.TempDir(), "state dir?a=b#frag%41", "nested")
	path := filepath.Join(dir, "corral.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	if db.Path() != path {
		t.Errorf("Path() = %q, want %q", db.Path(), path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("database file not at %s: %v", path, err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("database file mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("parent directory: %v, mode %v, want 0700", err, di.Mode().Perm())
	}
	v, err := db.SchemaVersion(ctx)
	if err != nil || v != migrationCount(t) {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, migrationCount(t))
	}
	if err := db.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	var mode string
	var fk int
	raw := store.RawSQL(db)
	if err := raw.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	if err := raw.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v; want 1", fk, err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	_, err := store.Open(ctx, "")
	wantClass(t, "Open(\"\")", err, errdefs.ErrInvalidArgument)

	garbage := filepath.Join(t.TempDir(), "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a database "), 512), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = store.Open(ctx, garbage)
	wantClass(t, "Open(garbage file)", err, errdefs.ErrFailedPrecondition)

	// A file migrated by a newer corral must not be touched by this one.
	newer := filepath.Join(t.TempDir(), "newer.db")
	db, err := store.Open(ctx, newer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.RawSQL(db).ExecContext(ctx, "PRAGMA user_version = 9999"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = store.Open(ctx, newer)
	wantClass(t, "Open(newer schema)", err, errdefs.ErrFailedPrecondition)
}

func TestPingAfterClose(t *testing.T) {
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantClass(t, "Ping after Close", db.Ping(context.Background()), errdefs.ErrUnavailable)
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestReopenKeepsDataAndSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "corral.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	u := storeUser(t, db, "alice")
	secret, key, err := db.CreateKey(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	w := storeWorkspace(t, db, u.ID)
	if err := db.RecordExec(ctx, store.ExecRecord{WorkspaceID: w.ID, UserID: u.ID, Argv: []string{"echo", "hi"}}); err != nil {
		t.Fatal(err)
	}
	if err := db.Audit(ctx, u.ID, "workspace.create", w.ID, "image busybox"); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	for i := range 3 { // reopening must neither re-run nor lose anything
		db, err = store.Open(ctx, path)
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		if v, err := db.SchemaVersion(ctx); err != nil || v != migrationCount(t) {
			t.Fatalf("reopen %d: SchemaVersion = %d, %v", i, v, err)
		}
		got, err := db.Authenticate(ctx, secret)
		if err != nil || got.ID != u.ID || got.Name != "alice" || !got.CreatedAt.Equal(u.CreatedAt) {
			t.Fatalf("reopen %d: Authenticate = %+v, %v; want %+v", i, got, err, u)
		}
		keys, err := db.ListKeys(ctx, u.ID)
		if err != nil || len(keys) != 1 || keys[0].ID != key.ID {
			t.Fatalf("reopen %d: ListKeys = %+v, %v", i, keys, err)
		}
		gw, err := db.GetWorkspace(ctx, u.ID, w.ID)
		if err != nil || gw.Image != "busybox" || string(gw.Spec) != string(w.Spec) {
			t.Fatalf("reopen %d: GetWorkspace = %+v, %v", i, gw, err)
		}
		execs, err := db.ListExecs(ctx, w.ID, 10)
		if err != nil || len(execs) != 1 || !slices.Equal(execs[0].Argv, []string{"echo", "hi"}) {
			t.Fatalf("reopen %d: ListExecs = %+v, %v", i, execs, err)
		}
		recs, err := db.AuditLog(ctx, "", 0, 10)
		if err != nil || len(recs) != 1 || recs[0].Action != "workspace.create" {
			t.Fatalf("reopen %d: AuditLog = %+v, %v", i, recs, err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConcurrentOpenMigratesOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "corral.db")
	const n = 6
	dbs := make([]*store.DB, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { dbs[i], errs[i] = store.Open(ctx, path) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Open %d: %v", i, errs[i])
		}
		defer dbs[i].Close()
	}
	// Every handle sees the one schema and each other's writes.
	u := storeUser(t, dbs[0], "alice")
	for i, db := range dbs {
		if v, err := db.SchemaVersion(ctx); err != nil || v != migrationCount(t) {
			t.Fatalf("handle %d: SchemaVersion = %d, %v", i, v, err)
		}
		if got, err := db.UserByName(ctx, "alice"); err != nil || got.ID != u.ID {
			t.Fatalf("handle %d: UserByName = %+v, %v", i, got, err)
		}
	}
}

func TestUsers(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 6_789_000, time.UTC)}
	store.SetNow(db, c.now)

	alice := storeUser(t, db, "alice")
	if !strings.HasPrefix(alice.ID, "usr_") || alice.Name != "alice" ||
		!alice.CreatedAt.Equal(time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.UTC)) {
		t.Fatalf("CreateUser = %+v", alice)
	}
	_, err := db.CreateUser(ctx, "alice")
	wantClass(t, "CreateUser(duplicate)", err, errdefs.ErrAlreadyExists)

	for _, bad := range []string{"", "Alice", "a b", "al/ice", "ålice", strings.Repeat("a", 65), "a\x00"} {
		_, err := db.CreateUser(ctx, bad)
		wantClass(t, fmt.Sprintf("CreateUser(%q)", bad), err, errdefs.ErrInvalidArgument)
		if errdefs.Code(err) != "invalid_user_name" {
			t.Errorf("CreateUser(%q): code %q", bad, errdefs.Code(err))
		}
		_, err = db.EnsureUser(ctx, bad)
		wantClass(t, fmt.Sprintf("EnsureUser(%q)", bad), err, errdefs.ErrInvalidArgument)
	}
	for _, good := range []string{"b", "bob.smith-2_x", strings.Repeat("z", 64)} {
		storeUser(t, db, good)
	}

	got, err := db.UserByName(ctx, "alice")
	if err != nil || got != alice {
		t.Fatalf("UserByName = %+v, %v; want %+v", got, err, alice)
	}
	got, err = db.UserByID(ctx, alice.ID)
	if err != nil || got != alice {
		t.Fatalf("UserByID = %+v, %v; want %+v", got, err, alice)
	}
	_, err = db.UserByName(ctx, "nobody")
	wantClass(t, "UserByName(missing)", err, errdefs.ErrNotFound)
	_, err = db.UserByID(ctx, "usr_missing")
	wantClass(t, "UserByID(missing)", err, errdefs.ErrNotFound)

	again, err := db.EnsureUser(ctx, "alice")
	if err != nil || again != alice {
		t.Fatalf("EnsureUser(existing) = %+v, %v; want %+v", again, err, alice)
	}

	// Racing EnsureUser calls for a new name agree on one user.
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			u, err := db.EnsureUser(ctx, "carol")
			if err != nil {
				t.Errorf("EnsureUser(carol): %v", err)
			}
			ids[i] = u.ID
		})
	}
	wg.Wait()
	slices.Sort(ids)
	if len(slices.Compact(ids)) != 1 || ids[0] == "" {
		t.Fatalf("racing EnsureUser made users %v", ids)
	}

	all, err := db.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range all {
		names = append(names, u.Name)
	}
	want := []string{"alice", "b", "bob.smith-2_x", "carol", strings.Repeat("z", 64)}
	if !slices.Equal(names, want) {
		t.Fatalf("ListUsers names = %v, want %v", names, want)
	}
}

var createdKeyRE = regexp.MustCompile(`^crl_[A-Za-z0-9_-]{43}$`)

func TestKeys(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	alice := storeUser(t, db, "alice")
	bob := storeUser(t, db, "bob")

	secret, k, err := db.CreateKey(ctx, alice.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !createdKeyRE.MatchString(secret) {
		t.Fatalf("CreateKey secret %q does not look like crl_ + 43 base64url characters", secret)
	}
	if k.Prefix != secret[:12] || k.UserID != alice.ID || k.UserName != "alice" ||
		!strings.HasPrefix(k.ID, "key_") || k.LastUsedAt != nil || k.RevokedAt != nil || k.CreatedAt.IsZero() {
		t.Fatalf("CreateKey key = %+v", k)
	}
	secret2, k2, err := db.CreateKey(ctx, alice.ID)
	if err != nil || secret2 == secret || k2.ID == k.ID {
		t.Fatalf("second CreateKey = %q %+v, %v: want a different key", secret2, k2, err)
	}
	bobSecret, bobKey, err := db.CreateKey(ctx, bob.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = db.CreateKey(ctx, "usr_missing")
	wantClass(t, "CreateKey(missing user)", err, errdefs.ErrNotFound)

	for s, want := range map[string]store.User{secret: alice, secret2: alice, bobSecret: bob} {
		got, err := db.Authenticate(ctx, s)
		if err != nil || got != want {
			t.Fatalf("Authenticate(%s…) = %+v, %v; want %+v", s[:12], got, err, want)
		}
	}
	for _, bad := range []string{"", "crl_", secret + "x", secret[:len(secret)-1], strings.Repeat("x", 10000)} {
		_, err := db.Authenticate(ctx, bad)
		wantClass(t, "Authenticate(bad key)", err, errdefs.ErrUnauthenticated)
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Fatalf("Authenticate error %q contains the secret", err)
		}
	}

	keys, err := db.ListKeys(ctx, alice.ID)
	if err != nil || len(keys) != 2 || keys[0].ID != k.ID || keys[1].ID != k2.ID {
		t.Fatalf("ListKeys(alice) = %+v, %v; want [%s %s]", keys, err, k.ID, k2.ID)
	}
	if keys[0].LastUsedAt == nil {
		t.Fatalf("ListKeys: LastUsedAt not set after Authenticate: %+v", keys[0])
	}
	all, err := db.ListKeys(ctx, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("ListKeys(all) = %+v, %v", all, err)
	}
	if i := slices.IndexFunc(all, func(x store.Key) bool { return x.ID == bobKey.ID }); i < 0 || all[i].UserName != "bob" {
		t.Fatalf("ListKeys(all) lacks bob's key: %+v", all)
	}
	if none, err := db.ListKeys(ctx, "usr_missing"); err != nil || none == nil || len(none) != 0 {
		t.Fatalf("ListKeys(missing user) = %+v, %v", none, err)
	}

	if err := db.RevokeKey(ctx, k.ID); err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	_, err = db.Authenticate(ctx, secret)
	wantClass(t, "Authenticate(revoked)", err, errdefs.ErrUnauthenticated)
	if got, err := db.Authenticate(ctx, secret2); err != nil || got != alice {
		t.Fatalf("revoking one key broke another: %+v, %v", got, err)
	}
	keys, _ = db.ListKeys(ctx, alice.ID)
	firstRevoked := keys[0].RevokedAt
	if firstRevoked == nil || keys[1].RevokedAt != nil {
		t.Fatalf("after RevokeKey: %+v", keys)
	}
	if err := db.RevokeKey(ctx, k.ID); err != nil {
		t.Fatalf("RevokeKey again: %v", err)
	}
	keys, _ = db.ListKeys(ctx, alice.ID)
	if !keys[0].RevokedAt.Equal(*firstRevoked) {
		t.Fatalf("second RevokeKey moved RevokedAt from %v to %v", firstRevoked, keys[0].RevokedAt)
	}
	wantClass(t, "RevokeKey(missing)", db.RevokeKey(ctx, "key_missing"), errdefs.ErrNotFound)
}

func TestImportKey(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	alice := storeUser(t, db, "alice")
	bob := storeUser(t, db, "bob")

	for _, bad := range []string{"", "short", strings.Repeat("a", 15), "sixteen chars ok", "tab\tin-the-middle-x", "ünïcødé-key-1234567", strings.Repeat("a", 513)} {
		_, err := db.ImportKey(ctx, alice.ID, bad)
		wantClass(t, fmt.Sprintf("ImportKey(%q)", bad), err, errdefs.ErrInvalidArgument)
	}

	const secret = "alice-operator-key-0001"
	k, err := db.ImportKey(ctx, alice.ID, secret)
	if err != nil {
		t.Fatalf("ImportKey: %v", err)
	}
	if k.UserID != alice.ID || k.UserName != "alice" || len(k.Prefix) > len(secret)/4 || !strings.HasPrefix(secret, k.Prefix) {
		t.Fatalf("ImportKey = %+v", k)
	}
	if got, err := db.Authenticate(ctx, secret); err != nil || got != alice {
		t.Fatalf("Authenticate(imported) = %+v, %v", got, err)
	}
	again, err := db.ImportKey(ctx, alice.ID, secret)
	if err != nil || again.ID != k.ID {
		t.Fatalf("ImportKey again = %+v, %v; want key %s", again, err, k.ID)
	}
	_, err = db.ImportKey(ctx, bob.ID, secret)
	wantClass(t, "ImportKey(another user's secret)", err, errdefs.ErrConflict)
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("ImportKey error %q contains the secret", err)
	}
	_, err = db.ImportKey(ctx, "usr_missing", "some-other-key-123456")
	wantClass(t, "ImportKey(missing user)", err, errdefs.ErrNotFound)

	sixteen := strings.Repeat("k", 16)
	if k16, err := db.ImportKey(ctx, bob.ID, sixteen); err != nil || len(k16.Prefix) != 4 {
		t.Fatalf("ImportKey(16 chars) = %+v, %v; want a 4-character prefix", k16, err)
	}

	// An operator's key revoked by an admin stays revoked across restarts
	// that import it again.
	if err := db.RevokeKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	again, err = db.ImportKey(ctx, alice.ID, secret)
	if err != nil || again.ID != k.ID || again.RevokedAt == nil {
		t.Fatalf("ImportKey of revoked key = %+v, %v; want the revoked key", again, err)
	}
	_, err = db.Authenticate(ctx, secret)
	wantClass(t, "Authenticate(revoked imported key)", err, errdefs.ErrUnauthenticated)

	// Racing imports of one secret for one user agree on one key.
	const raced = "raced-operator-key-9876"
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			k, err := db.ImportKey(ctx, bob.ID, raced)
			if err != nil {
				t.Errorf("racing ImportKey: %v", err)
			}
			ids[i] = k.ID
		})
	}
	wg.Wait()
	slices.Sort(ids)
	if len(slices.Compact(ids)) != 1 || ids[0] == "" {
		t.Fatalf("racing ImportKey made keys %v", ids)
	}
}

func TestAuthenticateRecordsUseAtMostOncePerMinute(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	c := &clock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	store.SetNow(db, c.now)
	u := storeUser(t, db, "alice")
	secret, k, err := db.CreateKey(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	lastUsed := func() time.Time {
		t.Helper()
		if _, err := db.Authenticate(ctx, secret); err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		keys, err := db.ListKeys(ctx, u.ID)
		if err != nil || len(keys) != 1 || keys[0].ID != k.ID || keys[0].LastUsedAt == nil {
			t.Fatalf("ListKeys = %+v, %v", keys, err)
		}
		return *keys[0].LastUsedAt
	}
	t0 := c.now()
	if got := lastUsed(); !got.Equal(t0) {
		t.Fatalf("first use: LastUsedAt = %v, want %v", got, t0)
	}
	c.add(59 * time.Second)
	if got := lastUsed(); !got.Equal(t0) {
		t.Fatalf("59 s later: LastUsedAt = %v, want it unchanged at %v", got, t0)
	}
	c.add(time.Second)
	if got := lastUsed(); !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("60 s later: LastUsedAt = %v, want %v", got, t0.Add(time.Minute))
	}
}

// TestOnlyKeyHashIsStored reads every byte the database left on disk and
// looks for the secrets; as a control it also looks for their SHA-256, which
// must be there.
func TestOnlyKeyHashIsStored(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := store.Open(ctx, filepath.Join(dir, "corral.db"))
	if err != nil {
		t.Fatal(err)
	}
	u := storeUser(t, db, "alice")
	created, _, err := db.CreateKey(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	const imported = "operator-chosen-secret-key-4242"
	if _, err := db.ImportKey(ctx, u.ID, imported); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{created, imported} {
		if _, err := db.Authenticate(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	diskBytes := func() []byte {
		var all []byte
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries { // corral.db, -wal and -shm while open
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, b...)
		}
		return all
	}
	check := func(when string) {
		disk := diskBytes()
		for _, s := range []string{created, imported} {
			if bytes.Contains(disk, []byte(s)) {
				t.Fatalf("%s: secret %s… found in the database files", when, s[:8])
			}
			// Nor a long piece of it beyond the display prefix.
			if bytes.Contains(disk, []byte(s[len(s)-12:])) {
				t.Fatalf("%s: tail of secret %s… found in the database files", when, s[:8])
			}
			h := sha256.Sum256([]byte(s))
			if !bytes.Contains(disk, h[:]) {
				t.Fatalf("%s: SHA-256 of secret %s… not found: the scan is not seeing the data", when, s[:8])
			}
		}
	}
	check("while open")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	check("after close")
}

func TestWorkspaces(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	c := &clock{t: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}
	store.SetNow(db, c.now)
	alice := storeUser(t, db, "alice")
	bob := storeUser(t, db, "bob")

	created := time.Date(2026, 3, 4, 5, 0, 0, 123_456_789, time.UTC)
	w := store.Workspace{
		ID: store.NewID("ws"), UserID: alice.ID, Runtime: "docker", Image: "corral-test:latest",
		State: "creating", Spec: json.RawMessage(`{"env":{"K":"v"},"policy":{"network":"none"}}`),
		CreatedAt: created,
	}
	if err := db.CreateWorkspace(ctx, w); err != nil {
		t.Fatalf("CreateWorkspace: %v", err)
	}
	wantClass(t, "CreateWorkspace(duplicate ID)", db.CreateWorkspace(ctx, w), errdefs.ErrAlreadyExists)

	orphan := w
	orphan.ID, orphan.UserID = store.NewID("ws"), "usr_missing"
	wantClass(t, "CreateWorkspace(missing user)", db.CreateWorkspace(ctx, orphan), errdefs.ErrNotFound)
	for name, mutate := range map[string]func(*store.Workspace){
		"no ID":    func(x *store.Workspace) { x.ID = "" },
		"no user":  func(x *store.Workspace) { x.UserID = "" },
		"no state": func(x *store.Workspace) { x.State = "" },
		"bad spec": func(x *store.Workspace) { x.Spec = json.RawMessage(`{"env":`) },
	} {
		bad := w
		bad.ID = store.NewID("ws")
		mutate(&bad)
		wantClass(t, "CreateWorkspace("+name+")", db.CreateWorkspace(ctx, bad), errdefs.ErrInvalidArgument)
	}

	got, err := db.GetWorkspace(ctx, alice.ID, w.ID)
	if err != nil {
		t.Fatalf("GetWorkspace: %v", err)
	}
	ms := created.Truncate(time.Millisecond)
	if got.ID != w.ID || got.UserID != alice.ID || got.Runtime != "docker" || got.Image != w.Image ||
		got.State != "creating" || got.Error != "" || string(got.Spec) != string(w.Spec) ||
		!got.CreatedAt.Equal(ms) || !got.UpdatedAt.Equal(ms) || !got.LastUsedAt.Equal(ms) ||
		got.CreatedAt.Location() != time.UTC {
		t.Fatalf("GetWorkspace = %+v\nwant the fields of %+v at %v", got, w, ms)
	}

	// Another user's workspace looks exactly like a missing one.
	_, errOther := db.GetWorkspace(ctx, bob.ID, w.ID)
	_, errMissing := db.GetWorkspace(ctx, bob.ID, "ws_missing")
	wantClass(t, "GetWorkspace(other user's)", errOther, errdefs.ErrNotFound)
	wantClass(t, "GetWorkspace(missing)", errMissing, errdefs.ErrNotFound)
	if errdefs.Code(errOther) != errdefs.Code(errMissing) ||
		strings.ReplaceAll(errOther.Error(), w.ID, "ID") != strings.ReplaceAll(errMissing.Error(), "ws_missing", "ID") {
		t.Fatalf("other user's workspace (%v) is distinguishable from a missing one (%v)", errOther, errMissing)
	}
	if any, err := db.Workspace(ctx, w.ID); err != nil || any.ID != w.ID || any.UserID != alice.ID {
		t.Fatalf("Workspace = %+v, %v", any, err)
	}
	_, err = db.Workspace(ctx, "ws_missing")
	wantClass(t, "Workspace(missing)", err, errdefs.ErrNotFound)

	// A workspace without a spec reads back without one.
	bare := store.Workspace{ID: store.NewID("ws"), UserID: bob.ID, Runtime: "process", State: "running"}
	if err := db.CreateWorkspace(ctx, bare); err != nil {
		t.Fatal(err)
	}
	if got, err := db.GetWorkspace(ctx, bob.ID, bare.ID); err != nil || got.Spec != nil || !got.CreatedAt.Equal(c.now()) {
		t.Fatalf("GetWorkspace(bare) = %+v, %v", got, err)
	}

	c.add(time.Hour)
	if err := db.SetWorkspaceState(ctx, w.ID, "error", "image not found"); err != nil {
		t.Fatalf("SetWorkspaceState: %v", err)
	}
	got, _ = db.GetWorkspace(ctx, alice.ID, w.ID)
	if got.State != "error" || got.Error != "image not found" || !got.UpdatedAt.Equal(c.now()) || !got.CreatedAt.Equal(ms) {
		t.Fatalf("after SetWorkspaceState: %+v", got)
	}
	if err := db.SetWorkspaceState(ctx, w.ID, "running", ""); err != nil {
		t.Fatal(err)
	}
	if got, _ = db.GetWorkspace(ctx, alice.ID, w.ID); got.State != "running" || got.Error != "" {
		t.Fatalf("after clearing the error: %+v", got)
	}
	wantClass(t, "SetWorkspaceState(missing)", db.SetWorkspaceState(ctx, "ws_missing", "running", ""), errdefs.ErrNotFound)
	wantClass(t, "SetWorkspaceState(empty)", db.SetWorkspaceState(ctx, w.ID, "", ""), errdefs.ErrInvalidArgument)

	used := created.Add(2 * time.Hour)
	if err := db.TouchWorkspace(ctx, w.ID, used); err != nil {
		t.Fatalf("TouchWorkspace: %v", err)
	}
	if err := db.TouchWorkspace(ctx, w.ID, used.Add(-time.Minute)); err != nil {
		t.Fatalf("TouchWorkspace(earlier): %v", err)
	}
	if got, _ = db.GetWorkspace(ctx, alice.ID, w.ID); !got.LastUsedAt.Equal(used.Truncate(time.Millisecond)) {
		t.Fatalf("LastUsedAt = %v, want %v (never backwards)", got.LastUsedAt, used)
	}
	wantClass(t, "TouchWorkspace(missing)", db.TouchWorkspace(ctx, "ws_missing", used), errdefs.ErrNotFound)

	for i := range 3 {
		if err := db.RecordExec(ctx, store.ExecRecord{WorkspaceID: w.ID, UserID: alice.ID, Argv: []string{"true", fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.DeleteWorkspace(ctx, w.ID); err != nil {
		t.Fatalf("DeleteWorkspace: %v", err)
	}
	_, err = db.GetWorkspace(ctx, alice.ID, w.ID)
	wantClass(t, "GetWorkspace(deleted)", err, errdefs.ErrNotFound)
	var left int
	if err := store.RawSQL(db).QueryRowContext(ctx, "SELECT count(*) FROM execs WHERE workspace_id = ?", w.ID).Scan(&left); err != nil || left != 0 {
		t.Fatalf("exec records left after DeleteWorkspace: %d, %v", left, err)
	}
	if err := db.DeleteWorkspace(ctx, w.ID); err != nil {
		t.Fatalf("DeleteWorkspace again: %v", err)
	}
	if got, err := db.GetWorkspace(ctx, bob.ID, bare.ID); err != nil || got.ID != bare.ID {
		t.Fatalf("deleting one workspace touched another: %+v, %v", got, err)
	}
}

func TestListWorkspacesPages(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	alice := storeUser(t, db, "alice")
	bob := storeUser(t, db, "bob")
	var want []string
	for range 25 {
		want = append(want, storeWorkspace(t, db, alice.ID).ID)
		if len(want)%5 == 0 {
			storeWorkspace(t, db, bob.ID)
		}
	}
	slices.Sort(want)

	var got []string
	after := ""
	for page := 0; ; page++ {
		ws, err := db.ListWorkspaces(ctx, alice.ID, after, 10)
		if err != nil {
			t.Fatalf("ListWorkspaces page %d: %v", page, err)
		}
		if len(ws) > 10 {
			t.Fatalf("page %d has %d workspaces, limit 10", page, len(ws))
		}
		for _, w := range ws {
			if w.UserID != alice.ID {
				t.Fatalf("page %d lists bob's workspace %s", page, w.ID)
			}
			got = append(got, w.ID)
		}
		if len(ws) < 10 {
			break
		}
		after = ws[len(ws)-1].ID
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged IDs\n%v\nwant (ascending)\n%v", got, want)
	}
	if ws, err := db.ListWorkspaces(ctx, alice.ID, "", 0); err != nil || len(ws) != 25 {
		t.Fatalf("ListWorkspaces(limit 0 = default) = %d, %v", len(ws), err)
	}
	if ws, err := db.ListWorkspaces(ctx, alice.ID, want[24], 10); err != nil || ws == nil || len(ws) != 0 {
		t.Fatalf("ListWorkspaces past the end = %v, %v; want an empty, non-nil page", ws, err)
	}
	if ws, err := db.ListWorkspaces(ctx, "usr_missing", "", 10); err != nil || len(ws) != 0 {
		t.Fatalf("ListWorkspaces(missing user) = %v, %v", ws, err)
	}
	all, err := db.AllWorkspaces(ctx)
	if err != nil || len(all) != 30 {
		t.Fatalf("AllWorkspaces = %d, %v; want 30", len(all), err)
	}
	if !slices.IsSortedFunc(all, func(a, b store.Workspace) int { return strings.Compare(a.ID, b.ID) }) {
		t.Fatalf("AllWorkspaces not in ID order")
	}
}

func TestExecs(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	alice := storeUser(t, db, "alice")
	w := storeWorkspace(t, db, alice.ID)
	other := storeWorkspace(t, db, alice.ID)

	base := time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC)
	full := store.ExecRecord{
		ID: "exec_given", WorkspaceID: w.ID, UserID: alice.ID,
		Argv: []string{"sh", "-c", "echo 'héllo wörld' && sleep 100"}, ExitCode: 137, Signal: "SIGKILL",
		TimedOut: true, OOMKilled: true, DurationMS: 30_000, StartedAt: base.Add(5 * time.Second),
	}
	if err := db.RecordExec(ctx, full); err != nil {
		t.Fatalf("RecordExec: %v", err)
	}
	for i := range 4 {
		r := store.ExecRecord{WorkspaceID: w.ID, UserID: alice.ID, Argv: []string{"step", fmt.Sprint(i)},
			ExitCode: i, DurationMS: int64(i), StartedAt: base.Add(time.Duration(i) * time.Second)}
		if err := db.RecordExec(ctx, r); err != nil {
			t.Fatalf("RecordExec %d: %v", i, err)
		}
	}
	if err := db.RecordExec(ctx, store.ExecRecord{WorkspaceID: other.ID, UserID: alice.ID, Argv: []string{"elsewhere"}}); err != nil {
		t.Fatal(err)
	}

	got, err := db.ListExecs(ctx, w.ID, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("ListExecs(limit 3) = %+v, %v", got, err)
	}
	full.StartedAt = full.StartedAt.UTC()
	if fmt.Sprintf("%+v", got[0]) != fmt.Sprintf("%+v", full) {
		t.Fatalf("newest record = %+v\nwant %+v", got[0], full)
	}
	if !slices.Equal(got[1].Argv, []string{"step", "3"}) || !slices.Equal(got[2].Argv, []string{"step", "2"}) {
		t.Fatalf("ListExecs not newest first: %+v", got)
	}
	for _, r := range got[1:] {
		if !strings.HasPrefix(r.ID, "exec_") || r.WorkspaceID != w.ID || r.TimedOut || r.OOMKilled || r.Signal != "" {
			t.Fatalf("generated record = %+v", r)
		}
	}
	if all, err := db.ListExecs(ctx, w.ID, 0); err != nil || len(all) != 5 {
		t.Fatalf("ListExecs(default limit) = %d, %v; want 5", len(all), err)
	}
	if none, err := db.ListExecs(ctx, "ws_missing", 10); err != nil || none == nil || len(none) != 0 {
		t.Fatalf("ListExecs(missing) = %v, %v", none, err)
	}

	wantClass(t, "RecordExec(duplicate ID)", db.RecordExec(ctx, full), errdefs.ErrAlreadyExists)
	wantClass(t, "RecordExec(missing workspace)",
		db.RecordExec(ctx, store.ExecRecord{WorkspaceID: "ws_missing", UserID: alice.ID, Argv: []string{"x"}}), errdefs.ErrNotFound)
	wantClass(t, "RecordExec(missing user)",
		db.RecordExec(ctx, store.ExecRecord{WorkspaceID: w.ID, UserID: "usr_missing", Argv: []string{"x"}}), errdefs.ErrNotFound)
	for name, r := range map[string]store.ExecRecord{
		"no workspace": {UserID: alice.ID, Argv: []string{"x"}},
		"no user":      {WorkspaceID: w.ID, Argv: []string{"x"}},
		"no argv":      {WorkspaceID: w.ID, UserID: alice.ID},
	} {
		wantClass(t, "RecordExec("+name+")", db.RecordExec(ctx, r), errdefs.ErrInvalidArgument)
	}
}

func TestAudit(t *testing.T) {
	ctx := context.Background()
	db := storeOpen(t)
	c := &clock{t: time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC)}
	store.SetNow(db, c.now)
	alice := storeUser(t, db, "alice")

	entries := []struct{ user, action, target, detail string }{
		{alice.ID, "workspace.create", "ws_1", "image busybox"},
		{"", "server.start", "", "version dev"},
		{alice.ID, "key.revoke", "key_1", ""},
	}
	for _, e := range entries {
		if err := db.Audit(ctx, e.user, e.action, e.target, e.detail); err != nil {
			t.Fatalf("Audit: %v", err)
		}
		c.add(time.Second)
	}
	wantClass(t, "Audit(empty action)", db.Audit(ctx, alice.ID, "", "x", ""), errdefs.ErrInvalidArgument)

	recs, err := db.AuditLog(ctx, "", 0, 0)
	if err != nil || len(recs) != 3 {
		t.Fatalf("AuditLog = %+v, %v", recs, err)
	}
	for i, e := range entries {
		r := recs[i]
		if r.UserID != e.user || r.Action != e.action || r.Target != e.target || r.Detail != e.detail ||
			!r.At.Equal(time.Date(2026, 8, 1, 0, 0, i, 0, time.UTC)) || (i > 0 && r.Seq <= recs[i-1].Seq) {
			t.Fatalf("record %d = %+v, want %+v", i, r, e)
		}
	}
	mine, err := db.AuditLog(ctx, alice.ID, 0, 10)
	if err != nil || len(mine) != 2 || mine[1].Action != "key.revoke" {
		t.Fatalf("AuditLog(alice) = %+v, %v", mine, err)
	}
	rest, err := db.AuditLog(ctx, "", recs[0].Seq, 1)
	if err != nil || len(rest) != 1 || rest[0].Seq != recs[1].Seq {
		t.Fatalf("AuditLog(after first, limit 1) = %+v, %v", rest, err)
	}

	// Append-only holds even against direct SQL.
	raw := store.RawSQL(db)
	if _, err := raw.ExecContext(ctx, "UPDATE audit SET detail = 'forged'"); err == nil {
		t.Fatal("UPDATE on the audit table succeeded")
	}
	if _, err := raw.ExecContext(ctx, "DELETE FROM audit"); err == nil {
		t.Fatal("DELETE on the audit table succeeded")
	}
	if again, _ := db.AuditLog(ctx, "", 0, 0); len(again) != 3 || again[0].Detail != "image busybox" {
		t.Fatalf("audit log changed: %+v", again)
	}
}

// TestConcurrentWriters runs writers on one file from several goroutines
// and through two handles, as a server and a CLI would: none may see
// SQLITE_BUSY (it would surface as ErrUnavailable).
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "corral.db")
	db1, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db1.Close()
	db2, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()

	const writers, perWriter, execsPer = 8, 15, 3
	users := make([]store.User, writers)
	secrets := make([]string, writers)
	for i := range writers {
		users[i] = storeUser(t, db1, fmt.Sprintf("user%d", i))
		if secrets[i], _, err = db1.CreateKey(ctx, users[i].ID); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range writers {
		db := db1
		if i%2 == 1 {
			db = db2
		}
		wg.Go(func() {
			u := users[i]
			for j := range perWriter {
				w := store.Workspace{ID: store.NewID("ws"), UserID: u.ID, Runtime: "process", State: "creating"}
				if err := db.CreateWorkspace(ctx, w); err != nil {
					t.Errorf("writer %d: CreateWorkspace: %v", i, err)
					return
				}
				for k := range execsPer {
					r := store.ExecRecord{WorkspaceID: w.ID, UserID: u.ID, Argv: []string{"run", fmt.Sprint(j, k)}}
					if err := db.RecordExec(ctx, r); err != nil {
						t.Errorf("writer %d: RecordExec: %v", i, err)
						return
					}
				}
				if err := db.SetWorkspaceState(ctx, w.ID, "running", ""); err != nil {
					t.Errorf("writer %d: SetWorkspaceState: %v", i, err)
					return
				}
				if err := db.TouchWorkspace(ctx, w.ID, time.Now()); err != nil {
					t.Errorf("writer %d: TouchWorkspace: %v", i, err)
					return
				}
				if _, err := db.Authenticate(ctx, secrets[i]); err != nil {
					t.Errorf("writer %d: Authenticate: %v", i, err)
					return
				}
				if err := db.Audit(ctx, u.ID, "workspace.create", w.ID, ""); err != nil {
					t.Errorf("writer %d: Audit: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	all, err := db1.AllWorkspaces(ctx)
	if err != nil || len(all) != writers*perWriter {
		t.Fatalf("AllWorkspaces = %d, %v; want %d", len(all), err, writers*perWriter)
	}
	for _, w := range all {
		if w.State != "running" {
			t.Fatalf("workspace %s in state %q", w.ID, w.State)
		}
		if rs, err := db2.ListExecs(ctx, w.ID, 0); err != nil || len(rs) != execsPer {
			t.Fatalf("ListExecs(%s) = %d, %v", w.ID, len(rs), err)
		}
	}
	if recs, err := db1.AuditLog(ctx, "", 0, store.MaxPageSize); err != nil || len(recs) != writers*perWriter {
		t.Fatalf("AuditLog = %d, %v", len(recs), err)
	}
}

var idRE = regexp.MustCompile(`^ws_[0-9a-v]{20}$`)

func TestNewID(t *testing.T) {
	// Within a process every ID sorts after the one before, so no two are
	// equal, even when many are made in one millisecond.
	prevID := ""
	for range 100000 {
		id := store.NewID("ws")
		if !idRE.MatchString(id) {
			t.Fatalf("NewID = %q, want ws_ + 20 of [0-9a-v]", id)
		}
		if id <= prevID {
			t.Fatalf("NewID %q does not sort after the previous %q", id, prevID)
		}
		prevID = id
	}
	// The same holds across goroutines.
	ids := make([][]string, 4)
	var wg sync.WaitGroup
	for g := range ids {
		wg.Go(func() {
			for range 5000 {
				ids[g] = append(ids[g], store.NewID("ws"))
			}
		})
	}
	wg.Wait()
	all := slices.Concat(ids...)
	slices.Sort(all)
	if len(slices.Compact(all)) != 4*5000 {
		t.Fatalf("concurrent NewID calls repeated IDs")
	}
	for g := range ids {
		if !slices.IsSorted(ids[g]) {
			t.Fatalf("goroutine %d got IDs out of order", g)
		}
	}
	// Later IDs sort after earlier ones, to the millisecond.
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	prev := store.NewIDAt("x", t0)
	for _, d := range []time.Duration{time.Millisecond, time.Second, time.Hour, 24 * time.Hour * 365 * 50} {
		next := store.NewIDAt("x", t0.Add(d))
		if next <= prev {
			t.Fatalf("ID at +%v (%s) does not sort after %s", d, next, prev)
		}
		prev = next
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	ctx := context.Background()
	db := storeOpen(b)
	u := storeUser(b, db, "alice")
	secret, _, err := db.CreateKey(ctx, u.ID)
	if err != nil {
		b.Fatal(err)
	}
	// Some other keys, so the lookup is through a real index.
	for i := range 1000 {
		other := storeUser(b, db, fmt.Sprintf("u%d", i))
		if _, _, err := db.CreateKey(ctx, other.ID); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := db.Authenticate(ctx, secret); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := db.Authenticate(ctx, secret); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("unknown", func(b *testing.B) {
		for b.Loop() {
			if _, err := db.Authenticate(ctx, "crl_not-a-key-at-all-but-long-enough"); !errors.Is(err, errdefs.ErrUnauthenticated) {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkWrites(b *testing.B) {
	ctx := context.Background()
	db := storeOpen(b)
	u := storeUser(b, db, "alice")
	w := storeWorkspace(b, db, u.ID)
	b.Run("CreateWorkspace", func(b *testing.B) {
		for b.Loop() {
			err := db.CreateWorkspace(ctx, store.Workspace{ID: store.NewID("ws"), UserID: u.ID, Runtime: "process", State: "creating"})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("RecordExec", func(b *testing.B) {
		for b.Loop() {
			if err := db.RecordExec(ctx, store.ExecRecord{WorkspaceID: w.ID, UserID: u.ID, Argv: []string{"true"}}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("RecordExec/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := db.RecordExec(ctx, store.ExecRecord{WorkspaceID: w.ID, UserID: u.ID, Argv: []string{"true"}}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("TouchWorkspace", func(b *testing.B) {
		for b.Loop() {
			if err := db.TouchWorkspace(ctx, w.ID, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
