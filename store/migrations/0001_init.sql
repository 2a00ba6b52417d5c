-- 0001: users, API keys, workspaces, exec records and the audit log.
--
-- Conventions for every migration in this directory:
--   * timestamps are INTEGER unix milliseconds, UTC;
--   * ids are TEXT made by store.NewID (time-sortable);
--   * each file runs inside one transaction with foreign keys on, and the
--     store sets PRAGMA user_version to the file's number in the same
--     transaction. Never edit a file that has shipped: add the next number.

CREATE TABLE users (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hash         BLOB    NOT NULL UNIQUE, -- SHA-256 of the secret; the secret itself is never stored
    prefix       TEXT    NOT NULL,        -- first characters of the secret, for display
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX api_keys_user ON api_keys(user_id, id);

CREATE TABLE workspaces (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    runtime      TEXT    NOT NULL,
    image        TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    error        TEXT    NOT NULL DEFAULT '',
    spec         BLOB,                    -- the server's JSON; opaque to the store
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL
) STRICT;

CREATE INDEX workspaces_user ON workspaces(user_id, id);

CREATE TABLE execs (
    id           TEXT    PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id      TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    argv         TEXT    NOT NULL,        -- JSON array of strings
    exit_code    INTEGER NOT NULL,
    signal       TEXT    NOT NULL DEFAULT '',
    timed_out    INTEGER NOT NULL DEFAULT 0,
    oom_killed   INTEGER NOT NULL DEFAULT 0,
    duration_ms  INTEGER NOT NULL,
    started_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX execs_workspace ON execs(workspace_id, started_at, id);
CREATE INDEX execs_user ON execs(user_id);

-- The audit log outlives what it talks about: no foreign keys, and rows can
-- be neither changed nor deleted.
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    user_id TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    detail  TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_user ON audit(user_id, seq);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
