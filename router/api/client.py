"""The client of the router's HTTP API, which the programs (``weft``, ``weft-net``) use.

One call is one HTTP request made with ``urllib.request`` (it imports fast, and the CLI runs
often; no proxies: the API is local). Its answer is the decoded JSON (or the raw body when
it is not JSON). Errors become exceptions with a one-line ``reason``:

    nothing listens on the address          NotRunning         (the CNI plugin: try later)
    the connection dropped mid-answer       Interrupted        (e.g. the router stopping)
    an HTTP error, a timeout, bad JSON      LocalProtocolError (the API's own error text)
"""

from __future__ import annotations

import json
from typing import Any

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.address import format_http_addr

REQUEST_TIMEOUT = 30.0


class NotRunning(Exception):
    """Nothing answers on the API address: no router runs there."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


class Interrupted(Exception):
    """The API dropped the connection mid-answer."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


class ApiClient:
    """Calls to the router API; errors become one-line LocalProtocolErrors."""

    def __init__(self, addr: tuple[str, int]) -> None:
        import urllib.request

        self.addr = addr
        self.where = format_http_addr(addr)
        self.base = f"http://{self.where}"
        # No proxies: the API is local, and http_proxy in the environment must not matter.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        import http.client
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                raw = response.read()
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise LocalProtocolError(self._error_text(exc.code, exc.read())) from None
        except urllib.error.URLError as exc:
            raise self._connect_error(exc.reason) from None
        except (OSError, ValueError) as exc:  # timeouts, resets mid-response
            raise self._connect_error(exc) from None
        except http.client.HTTPException as exc:  # cut short (e.g. a router stopping)
            raise Interrupted(
                f"the router API on {self.where} closed the connection mid-answer "
                f"({type(exc).__name__})"
            ) from None
        if not content_type.startswith("application/json"):
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            raise LocalProtocolError(
                f"the router API on {self.where} sent malformed JSON for {path}"
            ) from None

    def answers(self) -> bool:
        """Whether something answers HTTP on the address (any status)."""
        try:
            self.call("GET", "/version", timeout=2.0)
        except NotRunning:
            return False
        except (LocalProtocolError, Interrupted):
            return True
        return True

    def _connect_error(self, reason: object) -> Exception:
        if isinstance(reason, ConnectionRefusedError):
            return NotRunning(f"no router is running (nothing answers on {self.where})")
        if isinstance(reason, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return Interrupted(
                f"the router API on {self.where} closed the connection mid-answer "
                f"({type(reason).__name__})"
            )
        if isinstance(reason, TimeoutError):
            message = f"the router API on {self.where} did not answer in time"
        else:
            text = getattr(reason, "strerror", None) or str(reason)
            message = f"cannot reach the router API on {self.where}: {text}"
        error: Exception = LocalProtocolError(message)
        return error

    @staticmethod
    def _error_text(status: int, raw: bytes) -> str:
        try:
            message = json.loads(raw)["error"]
            if isinstance(message, str) and message:
                return message
        except (ValueError, KeyError, TypeError):
            pass
        return f"the router API answered HTTP {status}"
