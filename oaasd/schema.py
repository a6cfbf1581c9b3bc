"""The store's schema: migrations keyed on ``PRAGMA user_version``.

Each entry is applied once, in order, in its own transaction, at start.
Never edit an applied entry: append a new one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: tasks, their state events, attempts, metrics, nodes.
    """
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, user TEXT NOT NULL,
        state TEXT NOT NULL, reason TEXT NOT NULL, message TEXT, state_at REAL NOT NULL,
        priority INTEGER NOT NULL, submitted_at REAL NOT NULL,
        started_at REAL, ended_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0, node_failures INTEGER NOT NULL DEFAULT 0,
        idempotency_key TEXT UNIQUE, parent_id INTEGER,
        spec TEXT NOT NULL, result TEXT
    ) STRICT;
    CREATE INDEX tasks_queue ON tasks(state, priority DESC, id);
    CREATE INDEX tasks_state_id ON tasks(state, id);
    CREATE INDEX tasks_user ON tasks(user, id);
    CREATE INDEX tasks_parent ON tasks(parent_id) WHERE parent_id IS NOT NULL;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, at REAL NOT NULL,
        old TEXT, new TEXT NOT NULL, reason TEXT NOT NULL, message TEXT
    ) STRICT;
    CREATE INDEX events_task ON events(task_id, id);
    CREATE TRIGGER tasks_insert_event AFTER INSERT ON tasks BEGIN
        INSERT INTO events(task_id, at, old, new, reason, message)
        VALUES (NEW.id, NEW.state_at, NULL, NEW.state, NEW.reason, NEW.message);
    END;
    CREATE TRIGGER tasks_state_event AFTER UPDATE OF state_at ON tasks BEGIN
        INSERT INTO events(task_id, at, old, new, reason, message)
        VALUES (NEW.id, NEW.state_at, OLD.state, NEW.state, NEW.reason, NEW.message);
    END;
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, seq INTEGER NOT NULL,
        node TEXT NOT NULL, placement TEXT NOT NULL, state TEXT NOT NULL,
        started_at REAL NOT NULL, ended_at REAL, exit_code INTEGER, signal TEXT,
        reason TEXT, message TEXT, locator TEXT
    ) STRICT;
    CREATE INDEX attempts_task ON attempts(task_id, seq);
    CREATE INDEX attempts_running ON attempts(state) WHERE state = 'RUNNING';
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, attempt_id INTEGER NOT NULL,
        at REAL NOT NULL, data TEXT NOT NULL
    ) STRICT;
    CREATE INDEX metrics_task ON metrics(task_id, id);
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY, config TEXT NOT NULL, source TEXT NOT NULL,
        intent TEXT, reason TEXT, intent_user TEXT, intent_at REAL
    ) STRICT;
    """,
    # 2: tunings and their trials (each trial is a task with parent_id = tuning id).
    """
    CREATE TABLE tunings (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, user TEXT NOT NULL,
        state TEXT NOT NULL, reason TEXT, description TEXT NOT NULL,
        created_at REAL NOT NULL, ended_at REAL
    ) STRICT;
    CREATE INDEX tunings_state ON tunings(state, id);
    CREATE TABLE trials (
        task_id INTEGER PRIMARY KEY, tuning_id INTEGER NOT NULL, config TEXT NOT NULL,
        baseline INTEGER NOT NULL DEFAULT 0, pruned INTEGER NOT NULL DEFAULT 0, prune_reason TEXT
    ) STRICT;
    CREATE INDEX trials_tuning ON trials(tuning_id, task_id);
    """,
]
