"""The ``oaasd`` console script: ``serve`` runs the daemon; ``simulate`` replays a trace."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

# The daemon's imports (aiohttp, pydantic, numpy) stay inside ``serve``:
# client commands start in a fraction of the time without them.


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, for machines."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"at": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        for key in ("task", "node"):
            if getattr(record, key, None) is not None:
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


THIRD_PARTY_LEVEL = logging.WARNING  # asyncssh logs every channel at INFO: 4.8 MB in 6 minutes
SHUTDOWN_GRACE_S = 3.0  # requests in flight at SIGTERM get this long, then are cancelled
# An idle kept-alive connection (or one slow to send its next head) is closed after this;
# long enough for clients that poll and reuse one connection (aiohttp's classic default).
KEEPALIVE_S = 75.0
EXIT_CONFIG, EXIT_STARTUP = 2, 3


def setup_logging(fmt: str, level: str, levels: dict[str, str] | None = None) -> None:
    """Log to stderr, one line per event: oaasd's loggers at ``level``, every other at WARNING.

    ``levels`` sets single loggers by name (``{"asyncssh": "debug"}``), oaasd's own too.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=THIRD_PARTY_LEVEL, handlers=[handler], force=True)
    logging.getLogger("oaasd").setLevel(level.upper())
    for name, value in (levels or {}).items():
        logging.getLogger(name).setLevel(value.upper())


async def start_serving(app, settings):
    """Lock the state dir, bind, start the daemon, accept connections; return the runner.

    Each step fails with a StartupError naming its path or address, and undoes
    the steps before it. The listener is bound before the store opens, so a
    taken port stops the start before any work is recovered.
    """
    from aiohttp import web

    from oaasd.http import listen
    from oaasd.http.app import DAEMON
    cfg = settings.server
    app[DAEMON].state_lock.acquire()
    socks = listen.bind(cfg.host, cfg.port)
    # lingering_time: after answering 413 to a body it did not read, aiohttp drains the
    # rest for this long; its 10 s default also held every shutdown that came after one.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, lingering_time=1.0,
                           keepalive_timeout=KEEPALIVE_S, shutdown_timeout=SHUTDOWN_GRACE_S)
    try:
        await runner.setup()  # starts the daemon: store opened, work recovered
        limits = listen.Limits(cfg.max_connections, cfg.max_connections_per_peer)
        for sock in socks:
            await listen.GuardedSite(runner, sock, limits, cfg.header_timeout_s).start()
    except BaseException:
        for sock in socks:
            sock.close()
        await runner.cleanup()
        app[DAEMON].state_lock.release()
        raise
    return runner


async def serve(settings, config_path: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT (0) or a fatal loop error (1); SIGHUP reloads."""
    import threadpoolctl

    from oaasd.errors import StartupError
    from oaasd.http.app import DAEMON, create_app
    from oaasd.service.notify import SystemdNotifier
    app = create_app(settings)
    daemon = app[DAEMON]
    # BLAS in this process only (tasks keep their own environment): one thread
    # per GP fit runs 3-6x faster on a busy head node and leaves a core to the loop.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    notifier = SystemdNotifier()
    try:
        runner = await start_serving(app, settings)
    except StartupError:
        raise
    except Exception as exc:  # a bug on the way up: still one line, the traceback at debug level
        raise StartupError(f"start-up failed: {type(exc).__name__}: {exc}") from exc
    log = logging.getLogger("oaasd")
    log.info("listening on http://%s (state in %s)", settings.server.listen, daemon.state_dir)
    notifier.send("READY=1", f"STATUS={daemon.status_line()}", f"MAINPID={os.getpid()}")
    status = asyncio.create_task(notifier.run(daemon.status_line), name="notify")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopped.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: daemon.spawn(reload(daemon, notifier, config_path), "reload"))
    await daemon.stopped.wait()
    notifier.send("STOPPING=1", "STATUS=stopping; running tasks are left to be re-adopted")
    status.cancel()
    log.info("shutting down; running tasks are left to be re-adopted")
    started = time.monotonic()
    await runner.cleanup()
    log.info("stopped in %.2fs", time.monotonic() - started)
    return 1 if daemon.fatal_reason else 0


async def reload(daemon, notifier, config_path: str | None) -> None:
    """SIGHUP: re-read the config file and apply it, telling systemd around it."""
    notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    try:
        await daemon.reload.file(config_path)
    except Exception:  # a reload bug must not take the running daemon down
        logging.getLogger("oaasd").exception("reload failed; the settings may be partly applied")
    notifier.send("READY=1", f"STATUS={daemon.status_line()}")


def run_loop(main_coro, kind: str = "uvloop") -> int:
    """Run the daemon on uvloop (faster HTTP) when asked and installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        kind = "asyncio"
    return uvloop.run(main_coro) if kind == "uvloop" else asyncio.run(main_coro)


def cmd_serve(args: argparse.Namespace) -> int:
    """``oaasd serve``: load the settings and run the daemon until stopped.

    A start-up failure is one log line naming the cause and exit code 3 (2 for a
    config error), never a traceback (``--log-level debug`` adds it for a bug).
    """
    from oaasd.config import load_settings
    from oaasd.errors import ConfigError, StartupError
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"oaasd: config error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    cfg = settings.server
    setup_logging(args.log_format or cfg.log_format, args.log_level or cfg.log_level, cfg.log_levels)
    log = logging.getLogger("oaasd")
    try:
        return run_loop(serve(settings, args.config), cfg.event_loop)
    except StartupError as exc:
        if exc.__cause__ is not None:
            log.debug("start-up failed", exc_info=exc.__cause__)
        log.critical("%s", exc.message)
        return EXIT_STARTUP


def cmd_token(args: argparse.Namespace) -> int:
    """``oaasd token new|hash``: make a token, or print the hash a [[users]] entry stores."""
    from oaasd.service.auth import new_token, token_hash
    if args.action == "new":
        token = new_token()
        print(f"token:        {token}\ntoken_sha256: {token_hash(token)}")
        return 0
    token = args.token if args.token is not None else sys.stdin.readline().strip()
    if not token:
        print("oaasd: no token given (argument or one line on stdin)", file=sys.stderr)
        return 2
    print(token_hash(token))
    return 0


def version() -> str:
    """The installed oaasd's version (``unknown`` when run from a tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed
    try:
        return installed("oaasd")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: each sub-command sets ``func``."""
    from oaasd.client import (
        commands as client_cli,  # submit, status, logs, cancel, wait, nodes, drain, resume
    )
    from oaasd.sim import command as sim_command  # simulate (numpy loads only when it runs)
    from oaasd.client import tune as tune_cli  # tune create/status/best/trials/cancel/wait
    parser = argparse.ArgumentParser(prog="oaasd", description="Optimization as a Service daemon")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    client_cli.add_connection_options(parser)  # also accepted after the sub-command
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve", help="run the daemon in the foreground")
    p_serve.add_argument("--config", help="path to oaasd.toml (default: embedded defaults)")
    p_serve.add_argument("--log-format", choices=("text", "json"))
    p_serve.add_argument("--log-level", default=None, help="oaasd's own log level (default: server.log_level)")
    p_serve.set_defaults(func=cmd_serve)
    p_token = sub.add_parser("token", help="make an API token or hash one for [[users]] token_sha256")
    p_token.add_argument("action", choices=("new", "hash"))
    p_token.add_argument("token", nargs="?", help="the token to hash (default: read one line from stdin)")
    p_token.set_defaults(func=cmd_token)
    client_cli.add_commands(sub)
    tune_cli.add_command(sub)
    sim_command.add_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
