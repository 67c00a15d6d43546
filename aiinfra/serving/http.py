"""The HTTP side of the serving application: the FastAPI app, its error shapes, metrics and request bodies.

Every error is JSON, ``{"error": message}``, with the status of its AiInfraError (or 404/405 for no route,
422 for a request FastAPI could not bind); a client's mistake is never a 500. Request bodies are read
with a byte limit (413 past it, counted as they arrive when there is no Content-Length) and parsed
here, before anything else sees them. No Ray: the Serve ingress (``app.py``) mounts ``api``.
"""

# No `from __future__ import annotations` here: FastAPI resolves the handlers' annotations (Request).

import json
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from aiinfra.config import format_validation_error
from aiinfra.errors import AiInfraError, InvalidInput, PayloadTooLarge
from aiinfra.inference.predictor import MAX_INSTANCES

__all__ = ["FeedbackItem", "FeedbackRequest", "Measure", "PredictRequest", "api", "json_body", "parse_body", "parse_json",
           "raw_body"]

# No docs routes of FastAPI's own: /docs, /redoc and /openapi.json describe every route to anyone who asks, so
# the ingress (app.py) serves them itself, only where the config says `serve.docs: true`.
api = FastAPI(title="aiinfra inference", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# What may tag a metric: a name a model can have (Ray encodes tags as ASCII; anything else is one tag).
_MODEL_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate from a JSON escape (\\ud800) becomes a visible escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@api.exception_handler(AiInfraError)
async def _platform_error(request: Request, exc: AiInfraError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"error": _utf8(exc.message)})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """No route for the path (404) or the method (405): the contract's error shape, not FastAPI's {"detail": ...}."""
    return JSONResponse(status_code=exc.status_code, content={"error": _utf8(str(exc.detail))}, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(status_code=422, content={"error": _utf8("invalid request: " + "; ".join(parts))})


class Measure:
    """Requests, errors and latency per model, version and route (health checks are not counted).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs each request
    through an extra task and stream, which costs a noticeable share of a fast request's time.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route and not route.startswith("/v2/health"):
                from aiinfra.serving.metrics import record_request

                state = scope.get("state") or {}  # what the routes put on request.state
                # The path's name only once a route found it served (after the token was checked): a
                # made-up name, sent with or without a token, would otherwise make a metric series of its own.
                name = str(state.get("model", ""))
                record_request(
                    model=name if _MODEL_TAG.fullmatch(name) else "(unknown)",
                    version=str(state.get("version", "")), route=route, status=status[0],
                    latency_ms=(time.perf_counter() - start) * 1000, rows=int(state.get("rows", 0)),
                )


api.add_middleware(Measure)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[Any] | None = None
    entity_ids: list[Any] | None = None


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200)
    label: Any = None
    labels: list[Any] | None = Field(None, max_length=MAX_INSTANCES)


class FeedbackRequest(BaseModel):
    """One label (``request_id`` + ``label``, or ``labels`` per row) or many (``items``)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(None, min_length=1, max_length=200)
    label: Any = None
    labels: list[Any] | None = Field(None, max_length=MAX_INSTANCES)
    items: list[FeedbackItem] | None = Field(None, min_length=1, max_length=MAX_INSTANCES)


async def raw_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, at most ``max_bytes`` long (else PayloadTooLarge)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the {max_bytes}-byte limit")
    raw = b""
    async for chunk in request.stream():  # a body without Content-Length is counted as it arrives
        raw += chunk
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"request body is over the {max_bytes}-byte limit")
    return raw


async def json_body(request: Request, max_bytes: int) -> Any:
    """The request's JSON body, at most ``max_bytes`` long (else PayloadTooLarge; not JSON: InvalidInput)."""
    return parse_json(await raw_body(request, max_bytes))


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON, strictly (not JSON, or not valid Unicode text: InvalidInput)."""
    try:
        # Decoded here, strictly, in the encoding json.loads would detect (UTF-8, -16 or -32): json.loads itself
        # decodes with "surrogatepass", which lets a lone surrogate through in any of them.
        text = raw.decode(json.detect_encoding(raw))
        body = json.loads(text)
        # A JSON escape can make a lone UTF-16 surrogate (\\ud800), which no UTF-8 text can carry: refused here,
        # before it reaches an error message or a model deployment (whose worker cannot even serialize it).
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        return body
    except UnicodeEncodeError:
        raise InvalidInput("request body holds a lone UTF-16 surrogate (an escape \\ud800 to \\udfff without its "
                           "pair), which is not valid Unicode text") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # Python's limit on the digits of an int it converts from text (4,300 by default)
        raise InvalidInput(f"request body holds a number too long to read: {e}") from None


def parse_body(model: type[BaseModel], what: str, body: Any) -> Any:
    """``body`` as a ``model`` (else InvalidInput naming each bad field of the ``what``)."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise InvalidInput(format_validation_error(what, e)) from None
