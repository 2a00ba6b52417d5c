-- 0002: conversations with an agent, and their events.
--
-- A conversation belongs to a user and a workspace and goes with either.
-- Its events are append-only and numbered 1, 2, 3… per conversation; the
-- conversation row holds the last number handed out, so that appending is
-- one UPDATE … RETURNING plus one INSERT in a single transaction.

CREATE TABLE conversations (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    state        TEXT    NOT NULL,
    llm_base_url TEXT    NOT NULL DEFAULT '', -- per-conversation override; '' = server default
    llm_model    TEXT    NOT NULL DEFAULT '',
    llm_key      BLOB,                        -- sealed (AES-GCM) by the server; never plaintext
    last_seq     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX conversations_user ON conversations(user_id, id);
CREATE INDEX conversations_workspace ON conversations(workspace_id);
CREATE INDEX conversations_state ON conversations(state);

CREATE TABLE conversation_events (
    id              TEXT    PRIMARY KEY,
    conversation_id TEXT    NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    at              INTEGER NOT NULL,
    source          TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL, -- JSON
    UNIQUE (conversation_id, seq)
) STRICT;

-- Events are never changed; they go only with their conversation.
CREATE TRIGGER conversation_events_no_update BEFORE UPDATE ON conversation_events
BEGIN
    SELECT RAISE(ABORT, 'conversation events are append-only');
END;
