"""The aiohttp application factory: the one HTTP module that knows the daemon.

``create_app`` builds the daemon (unless one is given), hands the handlers
its services bundle under ``SERVICES``, installs the error and auth
middlewares and every route, and starts and stops the daemon in one
``cleanup_ctx`` generator.
"""

from __future__ import annotations

import logging

from aiohttp import web

from oaasd.config import Settings
from oaasd.http import events as events_api
from oaasd.http import metrics as metrics_api
from oaasd.http import nodes as nodes_api
from oaasd.http import openapi
from oaasd.http import pipelines as pipelines_api
from oaasd.http import tasks as tasks_api
from oaasd.http import tunings as tunings_api
from oaasd.http.auth import auth_middleware
from oaasd.http.common import SERVICES, Services, error_middleware
from oaasd.service.daemon import Daemon

log = logging.getLogger("oaasd")
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)  # for the CLI, which runs it; handlers use SERVICES


def services_of(d: Daemon) -> Services:
    """The bundle of a daemon's parts the handlers use."""
    async def scrape_metrics():
        d.metrics.refresh(await d.store.count_by_state(), d.scheduler.queue, d.cluster, d.events.subscribers)
        return d.metrics.registry

    return Services(settings=d.settings, store=d.store, intake=d.intake, views=d.views, users=d.users,
                    callbacks=d.callbacks, nodes=d.nodes, tunings=d.tunings, workers=d.tunings.workers,
                    pipelines=d.pipelines, events=d.events, scrape_metrics=scrape_metrics,
                    counts=lambda: (len(d.runner.runs), d.scheduler.queue_length))


async def _daemon_ctx(app: web.Application):
    daemon = app[DAEMON]
    try:
        await daemon.start()
    except BaseException:
        try:  # what did start is stopped: no store thread keeps the process alive
            await daemon.stop()
        except Exception:
            log.debug("stop after a failed start", exc_info=True)
        raise
    yield
    await daemon.stop()


def create_app(settings: Settings, daemon: Daemon | None = None) -> web.Application:
    """The aiohttp application of one daemon."""
    daemon = daemon or Daemon(settings)
    app = web.Application(middlewares=[error_middleware, auth_middleware(daemon.users)],
                          client_max_size=settings.server.max_body_bytes)
    app[DAEMON] = daemon
    app[SERVICES] = services_of(daemon)
    for module in (tasks_api, nodes_api, pipelines_api, tunings_api, metrics_api):
        app.add_routes(module.routes)
    events_api.setup(app)
    app.add_routes(openapi.routes)
    app.cleanup_ctx.append(_daemon_ctx)
    return app
