"""The configuration: `dataflows.yaml`, overridden by WAXFLOW__SECTION__KEY variables.

Which file: `--config FILE`, else $WAXFLOW_CONFIG, else ./dataflows.yaml (built-in defaults
when that default file does not exist). Every value is validated at startup; a bad one stops
the program with a message naming the key (`kafka.partitions: ...`).

    types.py       value types (durations, sizes, host:port...) and the base of the sections
    models.py      a section per component and `Settings`, the whole file
    enrichment.py  the `enrichment` section
    load.py        reading the file and the environment; errors that name the key
    reference.py   the configuration reference in Markdown
"""

from flows.settings.enrichment import (
    SNMP,
    Classifiers,
    Enrichment,
    ExporterRule,
    GeoIP,
    InterfaceRule,
    Network,
    Sampling,
    SNMPCredentials,
    StaticExporter,
    StaticInterface,
)
from flows.settings.load import CONFIG_ENV, DEFAULT_CONFIG, config_path, describe_errors, load_settings
from flows.settings.models import (
    API,
    ENV_PREFIX,
    ClickHouse,
    Inlet,
    Kafka,
    Listener,
    Logging,
    Settings,
)
from flows.settings.reference import reference_markdown, reference_rows
from flows.settings.types import ConfigError, Duration, format_duration, parse_duration, split_host_port

__all__ = [
    "API", "CONFIG_ENV", "DEFAULT_CONFIG", "ENV_PREFIX", "SNMP", "SNMPCredentials", "Classifiers",
    "ClickHouse", "ConfigError", "Duration", "Enrichment", "ExporterRule", "GeoIP", "Inlet",
    "InterfaceRule", "Kafka", "Listener", "Logging", "Network", "Sampling", "Settings",
    "StaticExporter", "StaticInterface", "config_path", "describe_errors", "format_duration",
    "load_settings", "parse_duration", "reference_markdown", "reference_rows", "split_host_port",
]
