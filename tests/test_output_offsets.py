"""The store's record of how far an attempt's output was read (schema 7, ``record_output``)."""

from __future__ import annotations

import sqlite3

from oaasd.store.db import Store
from oaasd.store.schema import MIGRATIONS


async def test_an_attempt_running_across_the_upgrade_keeps_its_metric_count(tmp_path):
    """Attempts started before schema 7 stored no offset: the migration counts their metrics,
    so a re-adopting daemon (reading from byte 0) skips exactly those."""
    path = tmp_path / "oaasd.sqlite3"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:6], start=1):
        db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    db.execute("INSERT INTO attempts (id, task_id, seq, node, placement, state, started_at) "
               "VALUES (1, 1, 1, 'local', '{}', 'RUNNING', 1.0), (2, 2, 1, 'local', '{}', 'COMPLETED', 1.0)")
    db.executemany("INSERT INTO metrics (task_id, attempt_id, at, data) VALUES (?, ?, 1.0, '{}')",
                   [(1, 1)] * 3 + [(2, 2)] * 2)
    db.commit()
    db.close()
    store = Store(path)
    await store.open()
    try:
        rows = {r["id"]: r for r in await store.fetch(
            "SELECT id, stdout_offset, metrics_stored, metrics_dropped FROM attempts")}
        assert rows[1] == {"id": 1, "stdout_offset": 0, "metrics_stored": 3, "metrics_dropped": 0}
        assert rows[2]["metrics_stored"] == 0, "only running attempts are re-read"
        await store.record_output(1, 4096, 4, 7, [(1, 2.0, {"step": 4})])
        (row,) = await store.fetch("SELECT stdout_offset, metrics_stored, metrics_dropped FROM attempts WHERE id=1")
        assert row == {"stdout_offset": 4096, "metrics_stored": 4, "metrics_dropped": 7}
        assert [m["data"] for m in await store.task_metrics(1)] == [{}, {}, {}, {"step": 4}]
    finally:
        await store.close()
