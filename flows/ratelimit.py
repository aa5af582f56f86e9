"""Log lines that repeat per datagram or per batch, rate-limited.

Here in flows/ and not in connectors/: emitting a log record is not I/O in the layering sense.
The pure steps only hand records to the `logging` module; where they go (stderr, JSON, a level
that hides them) is decided once per process by the shell (waxflow/logs.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    """At most one line per `interval` seconds per key; the rest are counted and summarised."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, level: int, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -1e9) < self.interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return
        skipped = self.suppressed.pop(key, 0)
        self.last[key] = now
        suffix = f" ({skipped} similar suppressed)" if skipped else ""
        self.logger.log(level, message + suffix, *args)
