"""The router's HTTP API: a small ASGI app served by hypercorn under trio.

Theory of operation
-------------------
The CLI is a thin client of this API; every command maps to one call. The app knows
nothing of the router's insides: it talks to a ``RouterControl`` (a Protocol the daemon
implements, and the tests fake). One request goes::

    hypercorn ──scope──▶ ApiApp.__call__ ──▶ read body (≤ MAX_BODY, 64 KiB, else 413)
        ──▶ ROUTES[(method, path)]  (unknown path 404, wrong method 405)
        ──▶ handler(control, Request) -> Response
        ──▶ JSON out; LocalProtocolError / ApiError -> 4xx {"error": reason};
            anything else -> 500 {"error": ...}, logged with its traceback

Adding an endpoint is adding a table entry::

    @route("POST", "/attach")
    async def _attach(control: RouterControl, request: Request) -> Response:
        body = request.json_object()
        ...
        return json_response({...})

Handlers are async so that later ones may await (IPAM consensus, netns work); the
current ones call the synchronous control methods directly.

``serve_api`` serves it (hypercorn's HTTP/1.1 behind ``httpserve``'s accept loop, which
caps open connections) until ``control.wait_stopped()`` returns; in-flight responses,
such as the one to ``POST /stop``, still go out. It reports readiness with
``task_status.started((host, port))`` only once the socket is bound and listening; a bind
failure raises LocalProtocolError before that.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import trio

import weftnet
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api import httpserve
from weftnet.router.api.httpserve import HttpConnections
from weftnet.router.api.text import ifname_ok, one_line

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPScope,
        LifespanScope,
        Scope,
    )

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # API bodies are small JSON; a cap per connection bounds memory under a flood
CONTAINER_IFNAME = "ethwe"   # netdev.CONTAINER_IFNAME (the API room imports no host code)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


class RouterControl(Protocol):
    """What the API needs from the router. Methods raise LocalProtocolError for bad
    input (answered 400). A control may also offer ``metrics() -> bytes`` (Prometheus
    text format), served at ``GET /metrics`` when present."""

    def report(self) -> dict[str, Any]: ...

    def connect(self, peers: list[str], replace: bool) -> list[str]: ...

    def forget(self, peers: list[str]) -> list[str]: ...

    def request_stop(self) -> None: ...

    def reset(self) -> None: ...

    async def wait_stopped(self) -> None: ...

    async def attach(self, container: str, addresses: list[str], name: str | None,
                     without_dns: bool, ifname: str = ...,
                     labels: dict[str, str] | None = ...) -> list[str]: ...

    async def detach(self, container: str, addresses: list[str], ifname: str | None = None,
                     missing_ok: bool = False) -> list[str]: ...

    async def ps(self) -> list[dict[str, Any]]: ...

    async def dns_add(self, addresses: list[str], container: str | None, name: str) -> int: ...

    async def dns_remove(self, addresses: list[str], container: str | None,
                         name: str | None) -> int: ...

    def dns_lookup(self, name: str) -> dict[str, Any]: ...

    def rmpeer(self, peer: str) -> dict[str, Any]: ...

    async def expose(self, addresses: list[str], name: str | None) -> list[str]: ...

    async def hide(self, addresses: list[str]) -> list[str]: ...

    async def label(self, container: str, add: dict[str, str], remove: list[str]) -> dict[str, str]: ...

    def policy_apply(self, text: str, source: str) -> list[str]: ...

    def policy_delete(self, name: str) -> None: ...


class ApiError(Exception):
    """An HTTP error answer with a one-line reason."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; an empty body is ``None``; malformed JSON is a 400."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON body: {exc}") from None
        except RecursionError:  # hostile input: "[[[[..." deeper than the parser goes
            raise ApiError(400, "malformed JSON body: nested too deeply") from None

    def json_object(self, *, required: bool = True,
                    fields: Iterable[str] | None = None) -> dict[str, Any]:
        """The body as a JSON object (``{}`` for an empty body unless required). With
        ``fields``, any other key is a 400: a misspelt option must not be ignored (an
        ``/expose`` whose only field is misspelt would expose a default address)."""
        if not required and not self.body.strip():
            return {}
        data = self.json()  # "null" is not an empty body: a 400 like any other non-object
        if not isinstance(data, dict):
            raise ApiError(400, "expected a JSON object as the request body")
        if fields is not None:
            known = set(fields)
            unknown = sorted(key for key in data if key not in known)
            if unknown:
                expected = ", ".join(sorted(known)) or "none"
                raise ApiError(400, f"unknown field {unknown[0][:40]!r} (fields: {expected})")
        return data


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode() + b"\n")


def error_response(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    # One line: the CLI prints it as `weft: <message>`.
    line = one_line(message) or "error"
    return Response(status, json.dumps({"error": line}).encode() + b"\n", headers=list(headers))


Handler = Callable[[RouterControl, Request], Awaitable[Response]]
ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    """Register ``handler`` for ``method path`` in ROUTES."""

    def register(handler: Handler) -> Handler:
        key = (method.upper(), path)
        if key in ROUTES:
            raise LocalProtocolError(f"route {method} {path} is registered twice")
        ROUTES[key] = handler
        return handler

    return register


# -- body field helpers: wrong types are 400s, never 500s ---------------------------------


def field_str_list(body: dict[str, Any], key: str, *, required: bool = True) -> list[str]:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"missing field {key!r} (a list of strings)")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"field {key!r} must be a list of strings")
    for item in value:
        check_printable(key, item)
    return list(value)


def check_printable(key: str, value: str) -> None:
    """No name, address or path we take has control characters (a NUL would reach the
    kernel's path lookup; a newline, the logs)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ApiError(400, f"field {key!r} must not contain control characters")


def field_bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"field {key!r} must be true or false")
    return value


# -- endpoints ----------------------------------------------------------------------------


@route("GET", "/version")
async def _version(control: RouterControl, request: Request) -> Response:
    return json_response({"version": weftnet.__version__})


@route("GET", "/report")
async def _report(control: RouterControl, request: Request) -> Response:
    return json_response(control.report())


@route("POST", "/connect")
async def _connect(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("peers", "replace"))
    peers = field_str_list(body, "peers", required=False)
    replace = field_bool(body, "replace")
    if not peers and not replace:
        raise ApiError(400, "no peers given")
    return json_response({"targets": control.connect(peers, replace)})


@route("POST", "/forget")
async def _forget(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("peers",))
    return json_response({"targets": control.forget(field_str_list(body, "peers"))})


@route("POST", "/stop")
async def _stop(control: RouterControl, request: Request) -> Response:
    request.json_object(required=False, fields=())  # nothing, or {}: not a garbled request
    control.request_stop()
    return json_response({"status": "stopping"})


@route("POST", "/reset")
async def _reset(control: RouterControl, request: Request) -> Response:
    request.json_object(required=False, fields=())
    control.reset()
    return json_response({"status": "resetting"})


def field_str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"missing field {key!r} (a string)")
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"field {key!r} must be a non-empty string")
    check_printable(key, value)
    return value


@route("POST", "/attach")
async def _attach(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("container", "addresses", "name", "without_dns", "ifname",
                                       "labels"))
    container = field_str(body, "container")
    assert container is not None
    addresses = field_str_list(body, "addresses", required=False)
    name, without_dns = field_str(body, "name", required=False), field_bool(body, "without_dns")
    ifname = field_ifname(body)
    labels = field_labels(body)
    if labels:   # weft attach --label (or CNI args): labels for network policy
        cidrs = await control.attach(container, addresses, name, without_dns,
                                     ifname or CONTAINER_IFNAME, labels)
    elif ifname is None:   # the control's default interface (ethwe)
        cidrs = await control.attach(container, addresses, name, without_dns)
    else:  # CNI ADD: the interface the runtime asked for (CNI_IFNAME)
        cidrs = await control.attach(container, addresses, name, without_dns, ifname)
    return json_response({"cidrs": cidrs})


@route("POST", "/detach")
async def _detach(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("container", "addresses", "ifname", "missing_ok"))
    container = field_str(body, "container")
    assert container is not None
    # CNI DEL gives ifname (this interface only) and missing_ok (a namespace already gone
    # is detached already)
    removed = await control.detach(container, field_str_list(body, "addresses", required=False),
                                   field_ifname(body), field_bool(body, "missing_ok"))
    return json_response({"removed": removed})


def field_ifname(body: dict[str, Any]) -> str | None:
    """The optional container interface name (Linux: 1-15 characters, no '/' or spaces)."""
    ifname = field_str(body, "ifname", required=False)
    if ifname is not None and not ifname_ok(ifname):
        raise ApiError(400, f"bad interface name {ifname[:40]!r} (1-15 characters, no '/', ':' "
                       "or spaces)")
    return ifname


@route("GET", "/ps")
async def _ps(control: RouterControl, request: Request) -> Response:
    return json_response({"containers": await control.ps()})


@route("POST", "/dns/add")
async def _dns_add(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("addresses", "container", "name"))
    name = field_str(body, "name")
    assert name is not None
    added = await control.dns_add(field_str_list(body, "addresses", required=False),
                                  field_str(body, "container", required=False), name)
    return json_response({"added": added})


@route("POST", "/dns/remove")
async def _dns_remove(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("addresses", "container", "name"))
    removed = await control.dns_remove(field_str_list(body, "addresses", required=False),
                                       field_str(body, "container", required=False),
                                       field_str(body, "name", required=False))
    return json_response({"removed": removed})


@route("GET", "/dns/lookup")
async def _dns_lookup(control: RouterControl, request: Request) -> Response:
    names = request.query.get("name", [])
    if len(names) != 1 or not names[0]:
        raise ApiError(400, "give one name: /dns/lookup?name=NAME")
    check_printable("name", names[0])
    return json_response(control.dns_lookup(names[0]))


@route("POST", "/rmpeer")
async def _rmpeer(control: RouterControl, request: Request) -> Response:
    peer = field_str(request.json_object(fields=("peer",)), "peer")
    assert peer is not None
    return json_response(control.rmpeer(peer))


@route("POST", "/expose")
async def _expose(control: RouterControl, request: Request) -> Response:
    body = request.json_object(required=False, fields=("addresses", "name"))
    cidrs = await control.expose(field_str_list(body, "addresses", required=False),
                                 field_str(body, "name", required=False))
    return json_response({"cidrs": cidrs})


@route("POST", "/hide")
async def _hide(control: RouterControl, request: Request) -> Response:
    body = request.json_object(required=False, fields=("addresses",))
    removed = await control.hide(field_str_list(body, "addresses", required=False))
    return json_response({"removed": removed})


def field_labels(body: dict[str, Any], key: str = "labels") -> dict[str, str]:
    """An optional mapping of label keys to values (checked again by the router)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise ApiError(400, f"field {key!r} must be a mapping of label keys to string values")
    return value


@route("POST", "/label")
async def _label(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("container", "labels", "remove"))
    container = field_str(body, "container")
    assert container is not None
    labels = await control.label(container, field_labels(body),
                                 field_str_list(body, "remove", required=False))
    return json_response({"container": container, "labels": labels})


@route("POST", "/policy/apply")
async def _policy_apply(control: RouterControl, request: Request) -> Response:
    body = request.json_object(fields=("text", "source"))
    text = body.get("text")
    if not isinstance(text, str):
        raise ApiError(400, "field 'text' must be the documents (YAML or JSON) as a string")
    source = field_str(body, "source", required=False) or "input"
    return json_response({"changed": control.policy_apply(text, source)})


@route("POST", "/policy/delete")
async def _policy_delete(control: RouterControl, request: Request) -> Response:
    name = field_str(request.json_object(fields=("name",)), "name")
    assert name is not None
    control.policy_delete(name)
    return json_response({"deleted": name})


@route("GET", "/metrics")
async def _metrics(control: RouterControl, request: Request) -> Response:
    metrics = getattr(control, "metrics", None)
    if metrics is None:
        raise ApiError(404, "metrics are not available")
    data = metrics()
    if not isinstance(data, bytes):
        raise TypeError(f"metrics() returned {type(data).__name__}, not bytes")
    return Response(200, data, content_type=METRICS_CONTENT_TYPE)


# -- the ASGI app -------------------------------------------------------------------------


class ApiApp:
    """ASGI 3 application dispatching through a route table (ROUTES by default)."""

    def __init__(
        self, control: RouterControl, routes: dict[tuple[str, str], Handler] | None = None
    ) -> None:
        self.control = control
        self.routes = ROUTES if routes is None else routes

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # websockets: not served; returning makes hypercorn refuse the handshake.

    async def _lifespan(
        self, scope: LifespanScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        method = scope["method"].upper()
        path = scope["path"]
        try:
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            body = await self._read_body(headers, receive)
            if body is None:
                return  # the client went away
            request = Request(
                method=method,
                path=path,
                query=parse_qs(scope["query_string"].decode("latin-1")),
                headers=headers,
                body=body,
            )
            response = await self._dispatch(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        try:
            await self._send(send, response)
        except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError,
                OSError) as exc:
            # hostile input: the client left (or hypercorn is closing the connection under a
            # request it never finished sending); nobody to answer, nothing to log loudly
            logger.debug("API %s %s: answer not sent: %r", method, path, exc)

    async def _dispatch(self, request: Request) -> Response:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            allowed = sorted(m for (m, p) in self.routes if p == request.path)
            if allowed:
                raise ApiError(
                    405,
                    f"method {request.method} not allowed on {request.path}",
                    [("allow", ", ".join(allowed))],
                )
            raise ApiError(404, f"no such endpoint: {request.path}")
        try:
            return await handler(self.control, request)
        except ApiError:
            raise
        except LocalProtocolError as exc:
            return error_response(400, exc.reason)
        except Exception as exc:
            logger.exception("API %s %s failed", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    @staticmethod
    async def _read_body(headers: dict[str, str], receive: ASGIReceiveCallable) -> bytes | None:
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ApiError(400, "invalid Content-Length")
            if int(length) > MAX_BODY:
                raise ApiError(413, f"request body over {MAX_BODY} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, f"request body over {MAX_BODY} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _send(send: ASGISendCallable, response: Response) -> None:
        headers = [
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(len(response.body)).encode("latin-1")),
            (b"cache-control", b"no-store"),
        ] + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})


def build_app(control: RouterControl) -> ApiApp:
    return ApiApp(control)


# -- serving ------------------------------------------------------------------------------


def _bind_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hypercorn_config(host: str, port: int) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [_bind_text(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("weftnet.router.api.server.http")
    config.graceful_timeout = 2.0
    config.include_server_header = False
    config.h11_max_incomplete_size = 16 * 1024  # hostile input: request line + headers
    return config


async def serve_api(
    control: RouterControl,
    host: str,
    port: int,
    *,
    conns: HttpConnections | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``host:port`` until ``control.wait_stopped()`` returns, with at
    most ``conns.max_connections`` connections open (``httpserve``).

    ``task_status.started((host, bound_port))`` once listening (``port=0`` picks one);
    LocalProtocolError("cannot listen on ADDR: reason") if the bind fails."""
    where = _bind_text(host, port)
    config = _hypercorn_config(host, port)
    try:
        sock = config.create_sockets().insecure_sockets[0]
        sock.listen(config.backlog)
    except OSError as exc:
        reason = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise LocalProtocolError(f"cannot listen on {where}: {reason}") from None
    bound_port = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(httpserve.serve, build_app(control), config,
                                    trio.socket.from_stdlib_socket(sock),
                                    conns=conns or HttpConnections(),
                                    shutdown_trigger=control.wait_stopped))
        logger.info("HTTP API listening on %s", _bind_text(host, bound_port))
        task_status.started((host, bound_port))
