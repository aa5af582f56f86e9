"""Prometheus counters of the decoders.

Errors are counted by a small fixed set of reasons (REASONS) so that a hostile exporter cannot
create unbounded label values. Every counter name starts with `waxflow_decode_`; the client
library appends `_total` in the exposition, so names pass `promtool check metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter

KINDS = ("netflow_v5", "netflow_v9", "ipfix", "sflow_v5")

REASONS = (
    "truncated",  # a header, set, record or sample ends before its stated length
    "bad_length",  # a length field is impossible (zero, too short, beyond the datagram)
    "unknown_version",  # not NetFlow v5/v9, IPFIX or sFlow v5
    "missing_template",  # a data set arrived before (or without) its template
    "bad_template",  # a template that cannot describe records (zero length, too long)
    "unsupported",  # well-formed input we do not decode (e.g. sFlow enterprise samples)
    "implausible",  # parses, but no exporter sends that (a v5 count or times no router could give)
    "not_encapsulated",  # a listener decapsulates tunnels, and this packet was in none
    "limit",  # a per-datagram limit was reached (flows/decode/limits.py); the rest is not read
    "malformed",  # anything else that made a datagram or set undecodable
)

DATAGRAMS = Counter("waxflow_decode_datagrams", "datagrams given to the decoder", ["kind"])
FLOWS = Counter("waxflow_decode_flows", "flow records produced by the decoder", ["kind"])
ERRORS = Counter("waxflow_decode_errors", "malformed or undecodable input, by reason", ["reason"])
TEMPLATES = Counter("waxflow_decode_templates", "template records learnt", ["kind"])
TEMPLATE_WITHDRAWALS = Counter("waxflow_decode_template_withdrawals", "IPFIX template withdrawals")
TEMPLATE_EVICTIONS = Counter(
    "waxflow_decode_template_evictions", "templates dropped because an exporter had too many")
EXPORTER_EVICTIONS = Counter(
    "waxflow_decode_exporter_evictions", "exporter states dropped because there were too many exporters")
HELD_SETS = Counter(
    "waxflow_decode_held_sets", "data sets held until their template arrives, by outcome", ["outcome"])
SFLOW_COUNTER_SAMPLES = Counter(
    "waxflow_decode_sflow_interface_stats_samples",
    "sFlow counter (interface statistics) samples seen; counted, not stored as flows")
OPTIONS_RECORDS = Counter(
    "waxflow_decode_options_records", "NetFlow v9 / IPFIX options data records read (sampling, system init)")

# Children resolved once: labels() costs a dict lookup and a lock per call.
DATAGRAMS_BY_KIND = {k: DATAGRAMS.labels(k) for k in KINDS}
FLOWS_BY_KIND = {k: FLOWS.labels(k) for k in KINDS}
ERRORS_BY_REASON = {r: ERRORS.labels(r) for r in REASONS}
TEMPLATES_BY_KIND = {k: TEMPLATES.labels(k) for k in KINDS}
HELD_BY_OUTCOME = {o: HELD_SETS.labels(o) for o in ("held", "recovered", "expired")}


def error(reason: str, amount: int = 1) -> None:
    """Count one malformed input by its reason (one of REASONS)."""
    ERRORS_BY_REASON[reason].inc(amount)
