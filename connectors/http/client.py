"""The client side: `waxflow top|query` and `waxflow up` talk to a running outlet's API."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from connectors.cluster import process_id
from connectors.http.errors import APIError
from flows.settings import Settings, split_host_port


class APIUnavailable(Exception):
    """No API answered in time at the configured address (not running, hanging, or gone)."""


def listen_address(settings: Settings) -> tuple[str, int]:
    """This process's API address: `api.listen`, its port plus the cluster process id."""
    host, port = split_host_port(settings.api.listen)
    return host, port + process_id()


def api_base(settings: Settings) -> str:
    host, port = listen_address(settings)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def call_api(settings: Settings, path: str, params: dict[str, str] | None = None,
             body: bytes | None = None, timeout: float = 60.0) -> Any:
    """GET (or POST `body`) an API path: the JSON answer, APIError for a refusal, APIUnavailable
    when nothing answers in `timeout` seconds (refused, reset, timed out, or not JSON)."""
    url = api_base(settings) + path + (f"?{urlencode(params)}" if params else "")
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if settings.api.token:
        request.add_header("Authorization", f"Bearer {settings.api.token}")
    if body is not None:
        request.add_header("Content-Type", "text/plain")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read())
        except (ValueError, OSError):
            detail = {"reason": "bad_request", "error": str(err.reason)}
        if not isinstance(detail, dict):
            detail = {}
        raise APIError(err.code, str(detail.get("reason", "error")), str(detail.get("error", ""))) from None
    # OSError covers URLError, refused/reset connections and socket timeouts (TimeoutError);
    # HTTPException a broken answer; ValueError a body that is not JSON. No usable API there now.
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise APIUnavailable(f"no answer from {url}: {err}") from None
