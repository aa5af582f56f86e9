"""The API's one write: a saved filter's row appended to the saved_filters table.

It has a store client of its own (as `clickhouse.dsn`: the API's read-only user cannot write),
used for nothing but `insert(saved_filters, one validated row)` — no SQL text is built from the
request. Writes are serialised, rate-limited (`WRITES_PER_MINUTE`), and the table holds at most
flows/saved_filters.MAX_SAVED filters; `api.saved_filters: false` turns them off.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from connectors import clickhouse
from connectors.http.errors import APIError
from connectors.http.queries import first_line
from flows import ddl, saved_filters
from flows.saved_filters import SavedFilter
from flows.settings import Settings

WRITES_PER_MINUTE = 30
WRITES = Counter("waxflow_api_saved_filter_writes_total", "Saved filters written through the API, by action",
                 ["action"])


class SavedFilterWriter:
    def __init__(self, settings: Settings, connect: Callable[[Settings], Any] | None = None) -> None:
        self.settings = settings
        self._connect = connect or (lambda s: clickhouse.connect(s.clickhouse))
        self._client: Any = None
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()

    def _admit(self, now: float) -> None:
        if not self.settings.api.saved_filters:
            raise APIError(403, "read_only", "saved filters are read-only here (api.saved_filters is false)")
        while self._recent and self._recent[0] <= now - 60:
            self._recent.popleft()
        if len(self._recent) >= WRITES_PER_MINUTE:
            raise APIError(429, "too_many_writes", f"at most {WRITES_PER_MINUTE} saved-filter writes a minute")

    def write(self, saved: SavedFilter, names: Callable[[], list[str]], deleted: bool = False) -> None:
        """Append the row. `names()`: the names saved now (read on a read-only session), called
        under the writer's lock so that parallel writes cannot pass the cap together; only a write
        that happens counts against the rate limit."""
        now = time.time()
        with self._lock:
            self._admit(now)
            existing = names()
            if deleted and saved.name not in existing:
                raise APIError(404, "not_found", f"no saved filter {saved.name!r}")
            if not deleted and saved.name not in existing and len(existing) >= saved_filters.MAX_SAVED:
                raise APIError(409, "too_many_saved_filters",
                               f"{saved_filters.MAX_SAVED} filters are saved already: delete one first")
            try:
                if self._client is None:
                    self._client = self._connect(self.settings)
                self._client.insert(ddl.SAVED_FILTERS, [saved_filters.row(saved, now, deleted)],
                                    column_names=list(saved_filters.COLUMNS),
                                    database=self.settings.clickhouse.database)
            except Exception as err:  # the store's message names what is wrong; a new client next time
                self._client = None
                raise APIError(503, "store_unavailable", first_line(err)) from None
            self._recent.append(now)
        WRITES.labels("delete" if deleted else "save").inc()
