"""The one error type every HTTP answer other than 2xx is built from (server and client side)."""

from __future__ import annotations


class APIError(Exception):
    """A refusal: HTTP status, a fixed `reason` word, and a message saying what is wrong."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason
