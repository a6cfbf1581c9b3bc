"""The bounded pools: one kind of blocked work never holds another, nor the process's exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from oaasd.service.pools import Pool, PoolTimeoutError


async def test_a_blocked_pool_holds_no_other_and_gives_up_on_time():
    stuck, other = Pool("stuck", 1), Pool("other", 1)
    release, ran = threading.Event(), []
    try:
        with pytest.raises(PoolTimeoutError, match="stuck: no answer within 0.2 s"):
            await stuck.run(release.wait, timeout_s=0.2)
        with pytest.raises(PoolTimeoutError):  # queued behind the stuck call, given up: never runs
            await stuck.run(ran.append, "late", timeout_s=0.2)
        started = time.monotonic()
        assert await other.run(sum, [1, 2, 3], timeout_s=5) == 6
        assert time.monotonic() - started < 1
    finally:
        release.set()
    assert await stuck.run(ran.append, "now", timeout_s=5) is None
    assert ran == ["now"]
    with pytest.raises(ZeroDivisionError):
        await other.run(divmod, 1, 0)


def test_a_call_that_never_returns_does_not_hold_the_exit():
    code = ("import asyncio, threading; from oaasd.service.pools import SOURCES\n"
            "async def main():\n"
            "    try:\n"
            "        await SOURCES.run(threading.Event().wait, timeout_s=0.1)\n"
            "    except Exception as exc:\n"
            "        print(type(exc).__name__)\n"
            "asyncio.run(main())\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout.strip() == "PoolTimeoutError", done.stderr
    assert time.monotonic() - started < 5
