"""``GET /metrics``: the daemon's Prometheus registry, its gauges refreshed at scrape time."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from oaasd.http.common import SERVICES

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """The daemon's registry in the exposition format the scraper accepts (Prometheus text by default)."""
    registry = await request.app[SERVICES].scrape_metrics()
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(registry), headers={"Content-Type": content_type})
