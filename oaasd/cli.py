"""The ``oaasd`` console script: ``serve`` runs the daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time

from aiohttp import web

from .config import load_settings
from .errors import ConfigError


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, for machines."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"at": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str, level: str) -> None:
    """Log to stderr, one line per event."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(settings) -> int:
    """Run the daemon until SIGTERM/SIGINT (0) or a fatal loop error (1)."""
    from .api import DAEMON
    from .daemon import create_app
    app = create_app(settings)
    daemon = app[DAEMON]
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port, reuse_address=True)
    await site.start()
    logging.getLogger("oaasd").info("listening on http://%s (state in %s)", settings.server.listen,
                                    daemon.state_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopped.set)
    await daemon.stopped.wait()
    logging.getLogger("oaasd").info("shutting down; running tasks are left to be re-adopted")
    started = time.monotonic()
    await runner.cleanup()
    logging.getLogger("oaasd").info("stopped in %.2fs", time.monotonic() - started)
    return 1 if daemon.fatal_reason else 0


def run_loop(main_coro, kind: str = "uvloop") -> int:
    """Run the daemon on uvloop (faster HTTP) when asked and installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        kind = "asyncio"
    return uvloop.run(main_coro) if kind == "uvloop" else asyncio.run(main_coro)


def cmd_serve(args: argparse.Namespace) -> int:
    """``oaasd serve``: load the settings and run the daemon until stopped."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"oaasd: config error: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(args.log_format or settings.server.log_format, args.log_level)
    return run_loop(serve(settings), settings.server.event_loop)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: each sub-command sets ``func``."""
    parser = argparse.ArgumentParser(prog="oaasd", description="Optimization as a Service daemon")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve", help="run the daemon in the foreground")
    p_serve.add_argument("--config", help="path to oaasd.toml (default: embedded defaults)")
    p_serve.add_argument("--log-format", choices=("text", "json"))
    p_serve.add_argument("--log-level", default="info")
    p_serve.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
