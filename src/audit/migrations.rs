//! The schema as a list of steps. `PRAGMA user_version` is the number of
//! steps applied; opening a database applies the missing ones, each in its
//! own transaction together with the version bump, so a crash leaves the
//! database at one version or the next, never between.
//!
//! Steps are never edited once released: a change is a new step at the end.

/// Step `n` (1-based) brings a database from version `n - 1` to `n`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE tasks (
        id            TEXT PRIMARY KEY NOT NULL,
        created_ms    INTEGER NOT NULL,
        argv          TEXT NOT NULL,              -- JSON array of strings
        policy        TEXT NOT NULL,              -- JSON of policy::Policy
        requested_by  TEXT NOT NULL,
        state         TEXT NOT NULL,
        exit_code     INTEGER,
        exit_signal   INTEGER,
        changed_files INTEGER,
        denial_count  INTEGER NOT NULL DEFAULT 0,
        updated_ms    INTEGER NOT NULL
    );
    CREATE TABLE transitions (
        id         INTEGER PRIMARY KEY,
        task       TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq        INTEGER NOT NULL,
        from_state TEXT,
        to_state   TEXT NOT NULL,
        time_ms    INTEGER NOT NULL
    );
    CREATE INDEX transitions_task ON transitions(task, time_ms);
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        task     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        time_ms  INTEGER NOT NULL,
        type     TEXT NOT NULL,
        -- Coalescing key beside (task, type): the syscall, path or address,
        -- and the detail. NULL subject: the event is never coalesced.
        subject  TEXT,
        detail   TEXT NOT NULL DEFAULT '',
        count    INTEGER NOT NULL DEFAULT 1,
        first_ms INTEGER NOT NULL,
        last_ms  INTEGER NOT NULL,
        data     TEXT NOT NULL                    -- JSON of event::Event
    );
    CREATE UNIQUE INDEX events_coalesce ON events(task, type, subject, detail)
        WHERE subject IS NOT NULL;
    CREATE INDEX events_task ON events(task, time_ms);
    CREATE TABLE flows (
        id          INTEGER PRIMARY KEY,
        task        TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        time_ms     INTEGER NOT NULL,
        host        TEXT NOT NULL,
        port        INTEGER NOT NULL,
        address     TEXT,
        protocol    TEXT NOT NULL,
        decision    TEXT NOT NULL,
        reason      TEXT NOT NULL,
        bytes_out   INTEGER NOT NULL,
        bytes_in    INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX flows_task ON flows(task, time_ms);
    CREATE TABLE commits (
        id             INTEGER PRIMARY KEY,
        task           TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq            INTEGER NOT NULL,
        time_ms        INTEGER NOT NULL,
        files          TEXT NOT NULL DEFAULT '[]', -- JSON [{path, decision}]
        file_count     INTEGER NOT NULL DEFAULT 0,
        conflict_count INTEGER NOT NULL DEFAULT 0,
        outcome        TEXT NOT NULL DEFAULT '',
        UNIQUE (task, seq)
    );
    "#,
    // 2: undo is recorded; `--since` and retention need time indexes.
    r#"
    ALTER TABLE commits ADD COLUMN undone_ms INTEGER;
    CREATE INDEX events_last ON events(last_ms);
    CREATE INDEX tasks_updated ON tasks(updated_ms);
    "#,
    // 3: every `airlock run` asks for the live tasks; without an index that
    // read every task ever recorded, so each run grew slower with history.
    r#"
    CREATE INDEX tasks_live ON tasks(created_ms, id)
        WHERE state IN ('queued', 'starting', 'running');
    "#,
];

/// The version a database has after all steps.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;
