"""setup_logging: oaasd's loggers at the asked level, third-party ones at WARNING unless named."""

from __future__ import annotations

import logging

import pytest

from oaasd.cli import setup_logging


@pytest.fixture
def restore_levels():
    names = ("", "oaasd", "asyncssh", "aiohttp", "aiosqlite")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_third_party_at_warning_oaasd_at_its_level(restore_levels):
    setup_logging("text", "debug")
    assert logging.getLogger("oaasd.store").getEffectiveLevel() == logging.DEBUG
    for name in ("asyncssh", "aiohttp.server", "aiosqlite"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name


def test_levels_per_logger(restore_levels):
    setup_logging("json", "warning", {"asyncssh": "debug", "oaasd.api": "info"})
    assert logging.getLogger("asyncssh").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("oaasd.api").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("oaasd.store").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("aiohttp").getEffectiveLevel() == logging.WARNING
