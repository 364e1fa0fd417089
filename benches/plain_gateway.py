"""The baseline of `benches/load.py`: the gateway anyone would write first with aiohttp and uvloop.

aiohttp's server, one `aiohttp.ClientSession` per variant forwarding POST /invocations, and
`random.choices` over the weights (or the variant named in X-Amzn-SageMaker-Target-Variant).
It does what splitserve's data plane does on the success path and nothing else: no metrics, no
validation, no capture. Run: `python -m benches.plain_gateway --port N --variant
Variant1=70=unix:/path.sock --variant Variant2=30=tcp:127.0.0.1:9000`.

With `--bare` it forwards nothing: aiohttp's server answering every InvokeEndpoint with a fixed
body, the floor under any gateway built on aiohttp's server (the load script's "aiohttp-bare").
"""

from __future__ import annotations

import argparse
import random
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"


def upstream_session(address: str) -> tuple[aiohttp.ClientSession, str]:
    """A session and the /invocations URL for `unix:/path` or `tcp:host:port`."""
    kind, _, where = address.partition(":")
    if kind == "unix":
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=where)
        ), "http://w/invocations"
    return aiohttp.ClientSession(), f"http://{where}/invocations"


def create_app(variants: list[tuple[str, float, str]]) -> web.Application:
    """The gateway over `variants`: (name, weight, address) each."""
    names = [name for name, _, _ in variants]
    weights = [weight for _, weight, _ in variants]
    upstreams: dict[str, tuple[aiohttp.ClientSession, str]] = {}

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        upstreams.update({name: upstream_session(address) for name, _, address in variants})
        yield
        for session, _ in upstreams.values():
            await session.close()

    async def invoke(request: web.Request) -> web.Response:
        variant = request.headers.get(TARGET_VARIANT) or random.choices(names, weights)[0]
        session, url = upstreams[variant]
        headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
        async with session.post(url, data=await request.read(), headers=headers) as answer:
            body = await answer.read()
            response = web.Response(body=body, status=answer.status)
            response.headers["Content-Type"] = answer.headers.get("Content-Type", "text/csv")
        response.headers["X-Amzn-Invoked-Production-Variant"] = variant
        return response

    app = web.Application()
    app.cleanup_ctx.append(sessions)
    app.router.add_post("/endpoints/{name}/invocations", invoke)
    return app


def create_bare_app() -> web.Application:
    """aiohttp's server alone: read the request, answer a fixed prediction."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"0.5\n", headers={"Content-Type": "text/csv"})

    app = web.Application()
    app.router.add_post("/endpoints/{name}/invocations", answer)
    return app


def main() -> None:
    """Parse --port and --variant NAME=WEIGHT=ADDRESS (repeated) or --bare; serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--bare", action="store_true", help="forward nothing: a fixed answer")
    args = parser.parse_args()
    if not args.bare and not args.variant:
        parser.error("give --variant NAME=WEIGHT=ADDRESS (repeated), or --bare")
    variants = [(n, float(w), a) for n, w, a in (v.split("=", 2) for v in args.variant)]
    app = create_bare_app() if args.bare else create_app(variants)
    web.run_app(
        app, host="127.0.0.1", port=args.port, access_log=None, print=None,
        loop=uvloop.new_event_loop(),
    )  # fmt: skip


if __name__ == "__main__":
    main()
