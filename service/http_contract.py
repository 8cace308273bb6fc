"""What the OpenAPI document and the method handling promise, made true in one place.

* :func:`install_openapi` post-processes FastAPI's generated document: every 422 is the project's
  :class:`~service.schemas.ErrorBody` (:mod:`service.errors` answers ``{"detail": "..."}``, never
  FastAPI's array of ``ValidationError``), and the answers the server's own limits give to any
  request are declared on every operation (400 from the HTTP layer for malformed HTTP, 503 at the
  connection cap; on operations with a body: 408 body timeout, 413 over the in-flight budget, 503
  budget full).
* :class:`AllowMethods` answers ``OPTIONS`` with 204 and an ``Allow`` that lists every method of
  the path, and completes the ``Allow`` of a 405 (Starlette lists only the first route that
  matched the path, e.g. ``GET`` for ``/adapters/{name}`` which also has ``DELETE``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.schemas import ErrorBody

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


ANY_REQUEST: dict[str, dict[str, Any]] = {
    "400": {
        "description": "malformed HTTP (request line, headers or framing), or headers over 16 "
        "KiB: answered by the HTTP layer before any route, as text, and the connection closed",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    "503": _error_response(
        "overloaded (max_connections), not ready, or shutting down: retry after `Retry-After`"
    ),
}
"""Answers any operation can give, whatever its route does."""
WITH_BODY: dict[str, dict[str, Any]] = {
    "408": _error_response(
        "the body did not arrive within body_timeout_s (the connection is closed)"
    ),
    "413": _error_response(
        "the body is over this route's limit or over the server's in-flight body budget"
    ),
    "503": _error_response(
        "overloaded (max_connections or the in-flight body budget), not ready, or shutting "
        "down: retry after `Retry-After`"
    ),
}
"""Answers every operation that reads a request body can give (:mod:`service.http_limits`)."""


def complete_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with 422 declared as ErrorBody and the server-wide answers added (in place)."""
    for path_item in doc.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status == "422":
                    schema = response.get("content", {}).get("application/json", {}).get("schema")
                    if schema is None or schema.get("$ref") == _FASTAPI_422:
                        description = response.get("description", "")
                        if description in ("", "Validation Error"):
                            description = "a parameter or field is missing or malformed"
                        responses[status] = _error_response(description)
            extra = {**ANY_REQUEST, **(WITH_BODY if "requestBody" in operation else {})}
            for status, response in extra.items():
                responses.setdefault(status, response)
            operation["responses"] = dict(sorted(responses.items()))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`complete_openapi` of FastAPI's document at ``/openapi.json`` (built once)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_openapi(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_PARAM = re.compile(r"\\\{[^}]+\\\}")
_METHODS = ("get", "put", "post", "delete", "patch")


def path_methods(paths: dict[str, Any]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(regex of the path template, its methods) for every path of an OpenAPI document."""
    table = []
    for template, item in paths.items():
        regex = _PARAM.sub("[^/]+", re.escape(template))
        methods = frozenset(m.upper() for m in item if m in _METHODS)
        table.append((re.compile(f"^{regex}$"), methods))
    return table


class AllowMethods:
    """``OPTIONS``: 204 with the path's methods in ``Allow``; a 405 gets the complete ``Allow``.

    The methods are the OpenAPI document's, so ``Allow`` says exactly what the document does.
    """

    def __init__(self, app: ASGIApp, openapi: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.openapi = openapi
        self._table: list[tuple[re.Pattern[str], frozenset[str]]] | None = None

    def _allow(self, path: str) -> bytes | None:
        if self._table is None:
            self._table = path_methods(self.openapi().get("paths", {}))
        methods: set[str] = set()
        for regex, path_methods_ in self._table:
            if regex.match(path):
                methods |= path_methods_
        if not methods:
            return None  # not a documented path (the page, static files): left as it is
        return ", ".join(sorted(methods | {"OPTIONS"})).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            allow = self._allow(scope["path"])
            if allow is not None:
                await send(
                    {"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]}
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return

        async def complete_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = self._allow(scope["path"])
                if allow is not None:
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"
                    ]
                    message["headers"] = [*headers, (b"allow", allow)]
            await send(message)

        await self.app(scope, receive, complete_allow)
