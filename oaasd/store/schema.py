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
    # 3: per-user pending counts for the max_pending limit.
    """
    CREATE INDEX tasks_user_state ON tasks(user, state);
    """,
    # tunings driven by external workers: workers, their trials and intermediate
    # reports; the space fingerprint finds a user's earlier tunings for use_history.
    """
    ALTER TABLE tunings ADD COLUMN fingerprint TEXT;
    CREATE INDEX tunings_history ON tunings(user, fingerprint, id);
    CREATE TABLE tuning_workers (
        id INTEGER PRIMARY KEY, tuning_id INTEGER NOT NULL, name TEXT, registered_at REAL NOT NULL
    ) STRICT;
    CREATE INDEX tuning_workers_tuning ON tuning_workers(tuning_id, id);
    CREATE TABLE worker_trials (
        id INTEGER PRIMARY KEY, tuning_id INTEGER NOT NULL, worker_id INTEGER NOT NULL,
        config TEXT NOT NULL, baseline INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL, reason TEXT, message TEXT, result TEXT,
        pruned INTEGER NOT NULL DEFAULT 0, prune_reason TEXT,
        started_at REAL NOT NULL, ended_at REAL, elapsed_s REAL, deadline_at REAL
    ) STRICT;
    CREATE INDEX worker_trials_tuning ON worker_trials(tuning_id, id);
    CREATE TABLE worker_reports (
        id INTEGER PRIMARY KEY, trial_id INTEGER NOT NULL, step REAL NOT NULL, value REAL NOT NULL,
        at REAL NOT NULL
    ) STRICT;
    CREATE INDEX worker_reports_trial ON worker_reports(trial_id, id);
    """,
    # callback_url deliveries: one row per ended task that has one; PENDING rows are retried after a restart.
    """
    CREATE TABLE callbacks (
        task_id INTEGER PRIMARY KEY, url TEXT NOT NULL, payload TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        last_status INTEGER, last_error TEXT, created_at REAL NOT NULL,
        last_at REAL, delivered_at REAL
    ) STRICT;
    CREATE INDEX callbacks_pending ON callbacks(state) WHERE state = 'PENDING';
    """,
    # pipeline adaptation loops: registrations, one row per interval, and the
    # tasks the ``tasks`` actuator keeps running (oaasd/pipelines.py).
    """
    CREATE TABLE pipelines (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, user TEXT NOT NULL, state TEXT NOT NULL,
        spec TEXT NOT NULL, applied TEXT, created_at REAL NOT NULL, stopped_at REAL
    ) STRICT;
    CREATE INDEX pipelines_state ON pipelines(state, id);
    CREATE INDEX pipelines_user ON pipelines(user, id);
    CREATE TABLE adaptations (
        id INTEGER PRIMARY KEY, pipeline_id INTEGER NOT NULL, at REAL NOT NULL,
        observed_rps REAL, predicted_rps REAL, configuration TEXT,
        latency_ms REAL, accuracy REAL, cost_cores REAL, objective REAL, feasible INTEGER, reasons TEXT,
        changed INTEGER NOT NULL, actuator TEXT, source_error TEXT
    ) STRICT;
    CREATE INDEX adaptations_pipeline ON adaptations(pipeline_id, id);
    CREATE TABLE pipeline_tasks (
        task_id INTEGER PRIMARY KEY, pipeline_id INTEGER NOT NULL,
        stage TEXT NOT NULL, variant TEXT NOT NULL, batch INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX pipeline_tasks_pipeline ON pipeline_tasks(pipeline_id, task_id);
    """,
    # 7: how far each attempt's stdout.log was read, committed with the metrics read up to there,
    # and how many metrics were stored or dropped beyond reporting.max_metrics_per_attempt. Attempts
    # running across the upgrade keep offset 0 and get their count, so re-reading skips the stored.
    """
    ALTER TABLE attempts ADD COLUMN stdout_offset INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN metrics_stored INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN metrics_dropped INTEGER NOT NULL DEFAULT 0;
    UPDATE attempts SET metrics_stored = (SELECT COUNT(*) FROM metrics m WHERE m.attempt_id = attempts.id)
        WHERE state = 'RUNNING';
    """,
    # 8: idempotency keys scoped per user, UNIQUE (user, idempotency_key) instead of a global
    # UNIQUE key; and a running task's cancel request, persisted before its kill so that
    # recovery finishes it. SQLite cannot drop a column's UNIQUE in place: the table is
    # rebuilt with every row, then its indexes and both triggers are created again as in 1 and 3.
    """
    CREATE TABLE tasks_rebuilt (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, user TEXT NOT NULL,
        state TEXT NOT NULL, reason TEXT NOT NULL, message TEXT, state_at REAL NOT NULL,
        priority INTEGER NOT NULL, submitted_at REAL NOT NULL,
        started_at REAL, ended_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0, node_failures INTEGER NOT NULL DEFAULT 0,
        idempotency_key TEXT, parent_id INTEGER,
        spec TEXT NOT NULL, result TEXT,
        cancel_reason TEXT, cancel_requested_at REAL,
        UNIQUE (user, idempotency_key)
    ) STRICT;
    INSERT INTO tasks_rebuilt (id, name, user, state, reason, message, state_at, priority, submitted_at,
                               started_at, ended_at, attempts, node_failures, idempotency_key, parent_id,
                               spec, result)
        SELECT id, name, user, state, reason, message, state_at, priority, submitted_at,
               started_at, ended_at, attempts, node_failures, idempotency_key, parent_id, spec, result
        FROM tasks;
    DROP TABLE tasks;
    ALTER TABLE tasks_rebuilt RENAME TO tasks;
    CREATE INDEX tasks_queue ON tasks(state, priority DESC, id);
    CREATE INDEX tasks_state_id ON tasks(state, id);
    CREATE INDEX tasks_user ON tasks(user, id);
    CREATE INDEX tasks_parent ON tasks(parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX tasks_user_state ON tasks(user, state);
    CREATE TRIGGER tasks_insert_event AFTER INSERT ON tasks BEGIN
        INSERT INTO events(task_id, at, old, new, reason, message)
        VALUES (NEW.id, NEW.state_at, NULL, NEW.state, NEW.reason, NEW.message);
    END;
    CREATE TRIGGER tasks_state_event AFTER UPDATE OF state_at ON tasks BEGIN
        INSERT INTO events(task_id, at, old, new, reason, message)
        VALUES (NEW.id, NEW.state_at, OLD.state, NEW.state, NEW.reason, NEW.message);
    END;
    """,
    # 9: each attempt's accounting, as sacct's MaxRSS, TotalCPU and Elapsed: peak memory in MB,
    # user + system CPU seconds (from its cgroup, else the wrapper's rusage), wall seconds.
    # NULL where it was not measured (attempts ended before 9, accounting unavailable).
    """
    ALTER TABLE attempts ADD COLUMN max_rss_mb REAL;
    ALTER TABLE attempts ADD COLUMN cpu_s REAL;
    ALTER TABLE attempts ADD COLUMN elapsed_s REAL;
    """,
]
