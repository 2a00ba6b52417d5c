package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// User is an account. API keys and workspaces belong to a user.
type User struct {
	ID, Name  string
	CreatedAt time.Time
}

// Key is an API key as the store keeps it: never the secret, only its hash
// and a short prefix for people to recognise it by.
type Key struct {
	ID, UserID, UserName, Prefix string
	CreatedAt                    time.Time
	LastUsedAt, RevokedAt        *time.Time
}

// KeySecretPrefix starts every key made by CreateKey.
const KeySecretPrefix = "crl_"

const (
	minImportedKeyLen = 16
	maxKeyLen         = 512
	createdPrefixLen  = 12 // "crl_" + 8 characters
	// lastUsedGranularity bounds how often Authenticate writes: it keeps the
	// hot path a single read for a busy key.
	lastUsedGranularity = time.Minute
)

var userNameRE = regexp.MustCompile(`^[a-z0-9_.-]{1,64}$`)

// ValidUserName reports whether name is an acceptable user name:
// 1 to 64 characters from [a-z0-9_.-].
func ValidUserName(name string) bool { return userNameRE.MatchString(name) }

// CreateUser creates a user. Errors: ErrInvalidArgument (code
// "invalid_user_name") if name is not 1–64 characters of [a-z0-9_.-];
// ErrAlreadyExists if the name is taken. Not idempotent; see EnsureUser.
func (db *DB) CreateUser(ctx context.Context, name string) (User, error) {
	if !ValidUserName(name) {
		return User{}, errdefs.Invalid("invalid_user_name", "user name %q: want 1-64 characters of a-z, 0-9, '_', '.', '-'", name)
	}
	u := User{ID: NewID("usr"), Name: name, CreatedAt: db.nowTime()}
	_, err := db.sql.ExecContext(ctx,
		"INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)",
		u.ID, u.Name, toMS(u.CreatedAt))
	if err != nil {
		return User{}, fmt.Errorf("create user %q: %w", name, classify(err))
	}
	return u, nil
}

// EnsureUser returns the user called name, creating it if there is none.
// Idempotent, and safe when several callers race to create the same name.
// Errors: ErrInvalidArgument for a bad name.
func (db *DB) EnsureUser(ctx context.Context, name string) (User, error) {
	if !ValidUserName(name) {
		return User{}, errdefs.Invalid("invalid_user_name", "user name %q: want 1-64 characters of a-z, 0-9, '_', '.', '-'", name)
	}
	_, err := db.sql.ExecContext(ctx,
		"INSERT INTO users (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
		NewID("usr"), name, toMS(db.nowTime()))
	if err != nil {
		return User{}, fmt.Errorf("ensure user %q: %w", name, classify(err))
	}
	return db.UserByName(ctx, name)
}

// UserByName returns the user called name. Errors: ErrNotFound.
func (db *DB) UserByName(ctx context.Context, name string) (User, error) {
	return db.queryUser(ctx, "name", name)
}

// UserByID returns the user with the given ID. Errors: ErrNotFound.
func (db *DB) UserByID(ctx context.Context, id string) (User, error) {
	return db.queryUser(ctx, "id", id)
}

func (db *DB) queryUser(ctx context.Context, column, value string) (User, error) {
	var u User
	var created int64
	// column is one of two constants above, never user input.
	err := db.sql.QueryRowContext(ctx,
		"SELECT id, name, created_at FROM users WHERE "+column+" = ?", value).
		Scan(&u.ID, &u.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, errdefs.NotFound("user %q not found", value)
	}
	if err != nil {
		return User{}, fmt.Errorf("get user %q: %w", value, classify(err))
	}
	u.CreatedAt = fromMS(created)
	return u, nil
}

// ListUsers returns every user, ordered by name.
func (db *DB) ListUsers(ctx context.Context) ([]User, error) {
	rows, err := db.sql.QueryContext(ctx, "SELECT id, name, created_at FROM users ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list users: %w", classify(err))
	}
	defer rows.Close()
	us := []User{}
	for rows.Next() {
		var u User
		var created int64
		if err := rows.Scan(&u.ID, &u.Name, &created); err != nil {
			return nil, fmt.Errorf("list users: %w", classify(err))
		}
		u.CreatedAt = fromMS(created)
		us = append(us, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", classify(err))
	}
	return us, nil
}

func hashKey(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// CreateKey makes a new API key for the user: "crl_" followed by 43
// base64url characters (256 bits from crypto/rand). The secret is returned
// once and never stored; the database keeps its SHA-256 and its first 12
// characters (Key.Prefix) for display. Errors: ErrNotFound if the user does
// not exist.
func (db *DB) CreateKey(ctx context.Context, userID string) (string, Key, error) {
	var raw [32]byte
	rand.Read(raw[:]) // never fails since Go 1.24
	secret := KeySecretPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	k, err := db.insertKey(ctx, userID, secret, secret[:createdPrefixLen])
	if err != nil {
		return "", Key{}, fmt.Errorf("create key for user %s: %w", userID, err)
	}
	return secret, k, nil
}

// ImportKey stores a key chosen by the operator (CORRAL_API_KEYS) for the
// user. Idempotent: importing the same secret for the same user again returns
// the stored key unchanged, and a key that was revoked stays revoked (check
// Key.RevokedAt). Its Prefix shows at most a quarter of the secret, capped at
// 12 characters, so a short key is not half printed in listings.
//
// Errors: ErrInvalidArgument if the secret is shorter than 16 or longer than
// 512 characters or holds anything but printable ASCII without spaces;
// ErrConflict if the secret already belongs to another user; ErrNotFound if
// the user does not exist.
func (db *DB) ImportKey(ctx context.Context, userID, secret string) (Key, error) {
	if len(secret) < minImportedKeyLen || len(secret) > maxKeyLen {
		return Key{}, errdefs.Invalid("invalid_api_key", "API key for user %s: want %d to %d characters, got %d",
			userID, minImportedKeyLen, maxKeyLen, len(secret))
	}
	for i := 0; i < len(secret); i++ {
		if c := secret[i]; c <= ' ' || c > '~' {
			return Key{}, errdefs.Invalid("invalid_api_key", "API key for user %s: only printable ASCII without spaces is allowed", userID)
		}
	}
	if k, err := db.keyByHash(ctx, hashKey(secret)); err == nil {
		if k.UserID != userID {
			return Key{}, fmt.Errorf("import key %s for user %s: %w: the key belongs to another user",
				k.Prefix, userID, errdefs.ErrConflict)
		}
		return k, nil
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return Key{}, fmt.Errorf("import key for user %s: %w", userID, err)
	}
	k, err := db.insertKey(ctx, userID, secret, secret[:min(createdPrefixLen, len(secret)/4)])
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		// Lost a race with another import of the same secret: answer as if
		// we had come second.
		return db.ImportKey(ctx, userID, secret)
	}
	if err != nil {
		return Key{}, fmt.Errorf("import key for user %s: %w", userID, err)
	}
	return k, nil
}

func (db *DB) insertKey(ctx context.Context, userID, secret, prefix string) (Key, error) {
	u, err := db.UserByID(ctx, userID)
	if err != nil {
		return Key{}, err
	}
	k := Key{ID: NewID("key"), UserID: u.ID, UserName: u.Name, Prefix: prefix, CreatedAt: db.nowTime()}
	_, err = db.sql.ExecContext(ctx,
		"INSERT INTO api_keys (id, user_id, hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)",
		k.ID, k.UserID, hashKey(secret), k.Prefix, toMS(k.CreatedAt))
	if err != nil {
		return Key{}, classify(err)
	}
	return k, nil
}

// keyByHashQuery is Authenticate's hot path, prepared once at Open.
const keyByHashQuery = "SELECT " + keyColumns + " WHERE k.hash = ?"

const keyColumns = `k.id, k.user_id, u.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at,
	u.created_at FROM api_keys k JOIN users u ON u.id = k.user_id`

type rowScanner interface{ Scan(dest ...any) error }

func scanKey(r rowScanner) (Key, time.Time, error) {
	var k Key
	var created, userCreated int64
	var lastUsed, revoked sql.NullInt64
	if err := r.Scan(&k.ID, &k.UserID, &k.UserName, &k.Prefix, &created, &lastUsed, &revoked, &userCreated); err != nil {
		return Key{}, time.Time{}, err
	}
	k.CreatedAt = fromMS(created)
	k.LastUsedAt = fromNullMS(lastUsed)
	k.RevokedAt = fromNullMS(revoked)
	return k, fromMS(userCreated), nil
}

func (db *DB) keyByHash(ctx context.Context, hash []byte) (Key, error) {
	k, _, err := scanKey(db.authStmt.QueryRowContext(ctx, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, errdefs.NotFound("API key not found")
	}
	if err != nil {
		return Key{}, classify(err)
	}
	return k, nil
}

// Authenticate returns the user that owns the API key secret. It costs one
// indexed read; it also records the key's last use, but writes at most once a
// minute per key. Errors: ErrUnauthenticated (code "unauthenticated") for an
// empty, unknown or revoked key — the error never contains the secret.
func (db *DB) Authenticate(ctx context.Context, secret string) (User, error) {
	if secret == "" || len(secret) > maxKeyLen {
		return User{}, errdefs.New(errdefs.ErrUnauthenticated, "unauthenticated", "invalid API key")
	}
	k, userCreated, err := scanKey(db.authStmt.QueryRowContext(ctx, hashKey(secret)))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, errdefs.New(errdefs.ErrUnauthenticated, "unauthenticated", "invalid API key")
	}
	if err != nil {
		return User{}, fmt.Errorf("authenticate: %w", classify(err))
	}
	if k.RevokedAt != nil {
		return User{}, errdefs.New(errdefs.ErrUnauthenticated, "unauthenticated", "API key %s was revoked", k.Prefix)
	}
	now := db.nowTime()
	if k.LastUsedAt == nil || now.Sub(*k.LastUsedAt) >= lastUsedGranularity {
		// The WHERE clause makes concurrent requests for one key write once.
		_, err := db.sql.ExecContext(ctx,
			"UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)",
			toMS(now), k.ID, toMS(now.Add(-lastUsedGranularity)))
		if err != nil {
			return User{}, fmt.Errorf("authenticate: record use of key %s: %w", k.ID, classify(err))
		}
	}
	return User{ID: k.UserID, Name: k.UserName, CreatedAt: userCreated}, nil
}

// ListKeys returns the keys of the user, or of every user if userID is
// empty, oldest first, revoked ones included. An unknown user has no keys
// (an empty, non-nil slice).
func (db *DB) ListKeys(ctx context.Context, userID string) ([]Key, error) {
	q := "SELECT " + keyColumns
	var args []any
	if userID != "" {
		q += " WHERE k.user_id = ?"
		args = append(args, userID)
	}
	q += " ORDER BY k.id"
	rows, err := db.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", classify(err))
	}
	defer rows.Close()
	ks := []Key{}
	for rows.Next() {
		k, _, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list keys: %w", classify(err))
		}
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list keys: %w", classify(err))
	}
	return ks, nil
}

// RevokeKey revokes the key so that Authenticate refuses it from now on.
// Idempotent: revoking a revoked key succeeds and keeps the first revocation
// time. Errors: ErrNotFound if there is no such key.
func (db *DB) RevokeKey(ctx context.Context, keyID string) error {
	res, err := db.sql.ExecContext(ctx,
		"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
		toMS(db.nowTime()), keyID)
	if err != nil {
		return fmt.Errorf("revoke key %s: %w", keyID, classify(err))
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("revoke key %s: %w", keyID, classify(err))
	} else if n == 0 {
		return errdefs.NotFound("API key %s not found", keyID)
	}
	return nil
}
