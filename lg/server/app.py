"""The ASGI application of `lg serve` (Starlette): the API, the approval page, /openapi.json, /healthz, /metrics.

API routes are made from lg.server.api.ENDPOINTS, the same table the OpenAPI document is made from. Each API
request is served in a worker thread (the store is SQLite, blocking): authenticate the bearer token, check its
role, parse the (capped) body, run the handler; anything refused is a JSON error and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from lg.errors import EnvironmentUnfit, InvalidInput, LgError
from lg.server import openapi
from lg.server.api import ENDPOINTS, Endpoint
from lg.server.auth import Sessions, bearer_token, require
from lg.server.body import parse_json, read_body
from lg.server.call import Call, Reply
from lg.server.errors import ApiError
from lg.server.metrics import Asgi, Metrics
from lg.server.page import Page
from lg.server.state import ServerConfig, Stores

log = logging.getLogger("lg.server")
Endpoint_ = Callable[[Request], Awaitable[Response]]


def create_app(config: ServerConfig) -> Asgi:
    stores = Stores(config.state_dir, config.state_url)
    stores.runs()  # open (and migrate) the store now: a store that cannot be opened fails `lg serve` at start
    metrics = Metrics(stores.runs)
    page = Page(config, stores, Sessions(), metrics)
    document = openapi.document()

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(lambda: stores.runs().connection.execute("SELECT 1").fetchone())
        except Exception as error:
            return JSONResponse({"ok": False, "error": str(error)}, status_code=503)
        return JSONResponse({"ok": True})

    async def metrics_text(request: Request) -> Response:
        text = await run_in_threadpool(metrics.text)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    routes = [Route(e.path, api_route(e, config, stores, metrics), methods=[e.method]) for e in ENDPOINTS]
    routes += [
        Route("/healthz", healthz), Route("/metrics", metrics_text), Route("/openapi.json", openapi_json),
        Route("/", page.index), Route("/static/page.css", page.css),
        Route("/login", page.login, methods=["POST"]), Route("/logout", page.logout, methods=["POST"]),
        Route("/runs/{run}/gates/{gate}", page.gate),
        Route("/runs/{run}/gates/{gate}/decide", page.decide, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return metrics.middleware(app)


async def http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no such path, wrong method) as the API's JSON errors."""
    status = error.status_code if isinstance(error, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    message = f"{request.method} {request.url.path}: " + ("no such endpoint (see /openapi.json)" if status == 404
                                                          else str(getattr(error, "detail", "refused")))
    return JSONResponse(ApiError(status, code, message).to_json(), status_code=status)


def api_route(endpoint: Endpoint, config: ServerConfig, stores: Stores, metrics: Metrics) -> Endpoint_:
    async def serve(request: Request) -> Response:
        try:
            limit = config.max_blob if endpoint.raw_body else config.max_body
            raw = await read_body(request, limit) if endpoint.body else None
            arguments = (endpoint, config, stores, request.headers.get("authorization"),
                         dict(request.path_params), dict(request.query_params), raw)
            reply = _serve(*arguments, fast=True) if endpoint.fast is not None else None
            if reply is None:
                reply = await run_in_threadpool(_serve, *arguments)
        except ApiError as error:
            if endpoint.name == "decideGate":
                metrics.decisions.labels(error.code).inc()
            return JSONResponse(error.to_json(), status_code=error.status)
        if endpoint.name == "decideGate":
            metrics.decisions.labels("recorded").inc()
        return _response(reply)

    serve.__name__ = endpoint.name
    return serve


def _serve(endpoint: Endpoint, config: ServerConfig, stores: Stores, authorization: str | None,
           params: Mapping[str, str], query: Mapping[str, str], raw: bytes | None, fast: bool = False) -> Any:
    token = bearer_token(stores.tokens(), authorization)
    require(token, endpoint.permission)
    body = raw if endpoint.raw_body else parse_json(raw) if raw is not None else None
    try:
        handler = endpoint.fast if fast and endpoint.fast is not None else endpoint.handler
        return handler(Call(stores, config, token, params, query, body))
    except InvalidInput as error:
        raise ApiError(400, "invalid_input", str(error)) from None
    except EnvironmentUnfit as error:
        raise ApiError(503, "state_unavailable", str(error)) from None
    except LgError as error:
        raise ApiError(409, "refused", str(error)) from None


def _response(reply: Any) -> Response:
    if not isinstance(reply, Reply):
        return JSONResponse(reply)
    if reply.content is not None:
        return Response(reply.content, status_code=reply.status, media_type=reply.media_type,
                        headers=dict(reply.headers))
    return JSONResponse(reply.data, status_code=reply.status, headers=dict(reply.headers))
