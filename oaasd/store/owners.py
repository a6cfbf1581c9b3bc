"""Who owns what an event names: a task's or a tuning's user (for the streams of non-admins)."""

from __future__ import annotations

from oaasd.store.db import Store

OWNER_OF = {"task_id": "SELECT user FROM tasks WHERE id=?", "tuning_id": "SELECT user FROM tunings WHERE id=?"}


async def owner_of(store: Store, key: str, ident: int) -> str | None:
    """The user owning the task (``key`` "task_id") or tuning ("tuning_id") ``ident``; None when there is none."""
    rows = await store.rows(OWNER_OF[key], (ident,))
    return rows[0][0] if rows else None
