"""Process setup, the shell's part of every waxflow process: logging as the configuration's
`logging` section says, and the configuration a dataflow process starts with.

Every process configures its own logging from the same settings: `waxflow --log-level` is put
in the environment as WAXFLOW__LOGGING__LEVEL (above the file), so the dataflow processes
`waxflow run` and `waxflow up` start read it like any other setting.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import prometheus_client

from flows.settings import ENV_PREFIX, ConfigError, Logging, Settings, load_settings

LEVEL_ENV = f"{ENV_PREFIX}LOGGING__LEVEL"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the exception
    with its traceback when there is one; log collectors parse it without a pattern."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(cfg: Logging) -> None:
    """Logs on stderr at the configured level and format, replacing any earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if cfg.format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=cfg.level, handlers=[handler], force=True)


def set_level_override(level: str | None) -> None:
    """`--log-level`: above the file's logging.level, here and in every process started from here."""
    if level:
        os.environ[LEVEL_ENV] = level.upper()


def dataflow_settings() -> Settings:
    """The configuration as a dataflow process starts with it, logging set up from it; a bad
    value ends the process (exit 2) with the message naming the key. The dataflows are the
    processes that serve /metrics: no `_created` series there (a timestamp per counter and
    label set, which doubles what Prometheus stores and nothing here reads)."""
    prometheus_client.disable_created_metrics()
    try:
        settings = load_settings()
    except ConfigError as err:
        print(f"configuration error\n{err}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.logging)
    return settings
