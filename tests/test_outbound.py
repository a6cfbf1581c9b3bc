"""The outbound policy: addresses x lists -> allowed or why not; the client on real loopback servers.

The client tests run aiohttp servers on 127.0.0.7 (allow-listed) and
127.0.0.8 (not), and a fake DNS so names resolve where a test wants.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from aiohttp import web
from yarl import URL

from oaasd.config import OutboundConfig, Settings
from oaasd.errors import ValidationFailedError
from oaasd.service.outbound import (
    Client,
    DeniedError,
    OutboundError,
    Policy,
    PolicyResolver,
    own_addresses,
    privileged,
)

OWN = "203.0.113.5"  # the daemon's listen address in these tables


def free_port(host: str) -> int:
    """A TCP port nobody listens on right now at ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def policy(allow=(), deny=(), default="allow") -> Policy:
    return Policy(tuple(map(ipaddress.ip_network, allow)), tuple(map(ipaddress.ip_network, deny)),
                  frozenset({ipaddress.ip_address(OWN)}), default)


# (address, admin, allow, deny, default) -> None (allowed) or a piece of the reason
ADDRESSES = [
    ("127.0.0.1", False, (), (), "allow", "127.0.0.1 is loopback"),
    ("127.5.6.7", False, (), (), "allow", "is loopback"),
    ("::1", False, (), (), "allow", "::1 is loopback"),
    ("::ffff:127.0.0.1", False, (), (), "allow", "127.0.0.1 is loopback"),
    ("169.254.169.254", False, (), (), "allow", "is link-local"),
    ("fe80::1", False, (), (), "allow", "is link-local"),
    ("0.0.0.0", False, (), (), "allow", "is unspecified"),
    ("0.1.2.3", False, (), (), "allow", "is unspecified"),
    ("::", False, (), (), "allow", "is unspecified"),
    ("224.0.0.251", False, (), (), "allow", "is multicast"),
    ("ff02::1", False, (), (), "allow", "is multicast"),
    ("255.255.255.255", False, (), (), "allow", "is multicast"),
    (OWN, False, (), (), "allow", "the daemon's own address"),
    ("10.1.2.3", False, (), (), "allow", None),
    ("8.8.8.8", False, (), (), "allow", None),
    ("2001:db8::1", False, (), (), "allow", None),
    # admins: only the deny list binds them
    ("127.0.0.1", True, (), (), "allow", None),
    ("169.254.169.254", True, (), (), "allow", None),
    (OWN, True, (), (), "allow", None),
    ("8.8.8.8", True, (), (), "deny", None),
    ("10.1.2.3", True, (), ("10.0.0.0/8",), "allow", "10.1.2.3 is in outbound.deny 10.0.0.0/8"),
    # allow opens a built-in denied range for users, exactly that far
    ("127.0.0.7", False, ("127.0.0.7/32",), (), "allow", None),
    ("127.0.0.8", False, ("127.0.0.7/32",), (), "allow", "is loopback"),
    ("::ffff:127.0.0.7", False, ("127.0.0.7/32",), (), "allow", None),
    (OWN, False, ("203.0.113.0/24",), (), "allow", None),
    # deny wins over allow
    ("10.9.1.1", False, ("10.0.0.0/8",), ("10.9.0.0/16",), "allow", "in outbound.deny 10.9.0.0/16"),
    ("10.8.1.1", False, ("10.0.0.0/8",), ("10.9.0.0/16",), "allow", None),
    ("::ffff:10.1.2.3", False, (), ("10.0.0.0/8",), "allow", "in outbound.deny"),
    ("fd00::5", False, (), ("fd00::/8",), "allow", "in outbound.deny fd00::/8"),
    # default = deny: only the allow list for users
    ("8.8.8.8", False, (), (), "deny", "8.8.8.8 is not in outbound.allow"),
    ("8.8.8.8", False, ("8.8.8.0/24",), (), "deny", None),
    ("127.0.0.1", False, (), (), "deny", "is loopback"),
]


@pytest.mark.parametrize("addr, admin, allow, deny, default, expected", ADDRESSES)
def test_policy_table(addr, admin, allow, deny, default, expected):
    why = policy(allow, deny, default).refusal(ipaddress.ip_address(addr), admin)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


URLS = [
    ("http://127.0.0.1:80/x", False, "127.0.0.1 is loopback"),
    ("http://localhost:8750/metrics", False, "localhost is loopback"),
    ("http://LOCALHOST./", False, "is loopback"),
    ("http://api.localhost/", False, "is loopback"),
    ("http://127.1/", False, "127.0.0.1 is loopback"),
    ("http://2130706433/", False, "127.0.0.1 is loopback"),
    ("http://0x7f.0.0.1/", False, "127.0.0.1 is loopback"),
    ("http://[::1]:9090/", False, "::1 is loopback"),
    ("http://[::ffff:127.0.0.1]/", False, "127.0.0.1 is loopback"),
    ("http://169.254.169.254/latest/meta-data/", False, "is link-local"),
    ("https://203.0.113.5/", False, "own address"),
    ("http://example.org/", False, None),  # a name: checked when resolved
    ("https://10.1.2.3:9090/api/v1/query", False, None),
    ("ftp://example.org/", False, "only http:// and https://"),
    ("http://localhost/", True, None),
    ("http://127.0.0.1/", True, None),
]


@pytest.mark.parametrize("url, admin, expected", URLS)
def test_urls_refused_as_written(url, admin, expected):
    why = policy().url_refusal(URL(url), admin)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


def test_registration_refusal_names_the_field():
    with pytest.raises(ValidationFailedError) as err:
        policy().check_registered("http://127.0.0.1:8750/metrics", "source.http.url", admin=False)
    assert err.value.status == 422
    assert err.value.detail == [{"field": "source.http.url", "type": "outbound_denied",
                                 "problem": "refused by the outbound policy: 127.0.0.1 is loopback"}]
    policy().check_registered("http://127.0.0.1:8750/metrics", "source.http.url", admin=True)


def test_settings_give_the_listen_address_and_who_is_admin():
    users = [{"name": "alice", "token_sha256": "a" * 64}, {"name": "root", "role": "admin", "token_sha256": "b" * 64}]
    s = Settings.model_validate({"server": {"listen": "192.0.2.44:8750"}, "users": users,
                                 "outbound": {"allow": ["127.0.0.7"], "deny": ["10.0.0.0/8"]}})
    assert own_addresses(s) == {ipaddress.ip_address("192.0.2.44")}
    p = Policy.from_settings(s)
    assert p.allow == (ipaddress.ip_network("127.0.0.7/32"),) and p.deny == (ipaddress.ip_network("10.0.0.0/8"),)
    assert (privileged(s, "alice"), privileged(s, "root"), privileged(s, "mallory")) == (False, True, False)
    assert privileged(Settings(), "anyone")  # auth off: the anonymous admin
    wildcard = Settings.model_validate({"server": {"listen": "0.0.0.0:8750"}, "users": users})
    assert ipaddress.ip_address("127.0.0.1") in own_addresses(wildcard)
    with pytest.raises(ValueError, match="host bits set"):
        Settings.model_validate({"outbound": {"deny": ["10.0.0.1/8"]}})


def fake_dns(table: dict[str, list[str]]):
    """A getaddrinfo answering from ``table`` (IPv4 and IPv6), unknown names as NXDOMAIN."""
    def lookup(host, port, family=0, type=0, proto=0, flags=0):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in table[host]]
    return lookup


async def test_resolver_hands_over_only_allowed_addresses():
    dns = fake_dns({"evil.test": ["127.0.0.1", "169.254.169.254"], "mixed.test": ["127.0.0.1", "10.0.0.5"]})
    user = PolicyResolver(policy(), admin=False, lookup=dns)
    with pytest.raises(OSError, match="127.0.0.1 is loopback; 169.254.169.254 is link-local"):
        await user.resolve("evil.test", 80)
    assert [r["host"] for r in await user.resolve("mixed.test", 80)] == ["10.0.0.5"]
    admin = PolicyResolver(policy(), admin=True, lookup=dns)
    assert [r["host"] for r in await admin.resolve("evil.test", 80)] == ["127.0.0.1", "169.254.169.254"]
    with pytest.raises(socket.gaierror):
        await user.resolve("nowhere.test", 80)


class Site:
    """An aiohttp server on one loopback address counting its hits."""

    def __init__(self, host: str):
        self.host, self.port, self.hits = host, free_port(host), []
        self.base = f"http://{host}:{self.port}"

    async def start(self, routes: list) -> "Site":
        app = web.Application()

        @web.middleware
        async def count(request, handler):
            self.hits.append((request.method, request.path, await request.read()))
            return await handler(request)
        app.middlewares.append(count)
        app.add_routes(routes)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        return self


def json_of(body):
    async def handler(request):
        return web.json_response(body)
    return handler


def found(to: str):
    async def handler(request):
        raise web.HTTPFound(to)
    return handler


@pytest.fixture
async def sites():
    inner = await Site("127.0.0.8").start([web.route("*", "/{tail:.*}", json_of({"rps": 99}))])
    outer = Site("127.0.0.7")

    async def redirect(request):
        raise web.HTTPFound(request.query["to"])

    async def slow(request):
        await asyncio.sleep(5)
        return web.json_response({})

    async def big(request):
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse it by
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b"x" * 65536)
        return resp

    async def keep(request):
        raise web.HTTPTemporaryRedirect("/echo")

    async def echo(request):
        return web.json_response({"got": (await request.read()).decode()})

    await outer.start([web.get("/rps", json_of({"rps": 5})), web.get("/redirect", redirect),
                       web.post("/redirect", redirect), web.get("/slow", slow), web.get("/big", big),
                       web.get("/loop", found("/loop")), web.post("/keep", keep), web.post("/echo", echo),
                       web.get("/hops", found("/hop2")), web.get("/hop2", found("rps"))])
    yield outer, inner
    for site in (outer, inner):
        await site.runner.cleanup()


def client() -> Client:
    dns = fake_dns({"good.test": ["127.0.0.7"], "evil.test": ["127.0.0.8"]})
    cfg = OutboundConfig(allow=["127.0.0.7/32"], max_response_bytes=1 << 20)
    return Client(Policy(tuple(map(ipaddress.ip_network, cfg.allow))), cfg, lookup=dns)


async def test_client_reaches_the_allow_list_and_never_the_rest(sites):
    outer, inner = sites
    c = client()
    try:
        answer = await c.request("GET", f"http://good.test:{outer.port}/rps", admin=False, timeout_s=5)
        assert (answer.status, answer.body) == (200, b'{"rps": 5}')
        for url in (f"http://evil.test:{inner.port}/rps",  # resolves to a denied address
                    f"{outer.base}/redirect?to={inner.base}/rps",  # redirects to one
                    f"{outer.base}/redirect?to=http://evil.test:{inner.port}/rps",  # redirects to a name of one
                    f"{inner.base}/rps"):
            with pytest.raises(DeniedError, match="refused by the outbound policy: .*127.0.0.8 is loopback"):
                await c.request("GET", url, admin=False, timeout_s=5)
        assert inner.hits == []
        answer = await c.request("GET", f"http://evil.test:{inner.port}/rps", admin=True, timeout_s=5)
        assert answer.status == 200 and len(inner.hits) == 1  # an admin's request may
    finally:
        await c.close()


async def test_client_bounds_redirects_size_and_time(sites):
    outer, _ = sites
    c = client()
    try:
        answer = await c.request("GET", f"{outer.base}/hops", admin=False, timeout_s=5)
        assert answer.body == b'{"rps": 5}'  # relative redirects, each hop checked
        outer.hits.clear()
        with pytest.raises(OutboundError, match="more than 5 redirects"):
            await c.request("GET", f"{outer.base}/loop", admin=False, timeout_s=5)
        assert len(outer.hits) == 6
        with pytest.raises(OutboundError, match="answer longer than 1048576 bytes"):
            await c.request("GET", f"{outer.base}/big", admin=False, timeout_s=5)
        with pytest.raises(OutboundError, match="did not answer within 0.3 s"):
            await c.request("GET", f"{outer.base}/slow", admin=False, timeout_s=0.3)
        answer = await c.request("POST", f"{outer.base}/redirect?to={outer.base}/echo", admin=False, timeout_s=5,
                                 data="{}")
        assert answer.status == 302  # a POST is not turned into a GET elsewhere
        answer = await c.request("POST", f"{outer.base}/keep", admin=False, timeout_s=5, data='{"a": 1}')
        assert answer.status == 307 and [h[1] for h in outer.hits].count("/echo") == 0  # nor kept as a POST
    finally:
        await c.close()
