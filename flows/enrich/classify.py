"""Classification: exporter rules (group, role, site, region, tenant) and interface rules
(connectivity, provider, boundary, rename, reject), written declaratively in
`enrichment.classifiers` (see flows/settings.py: ExporterRule, InterfaceRule).

A rule matches when all its conditions hold (regexes are searched; their named groups feed
`$name` templates). Rules run in order; the first rule deciding an attribute wins and a
matching `reject` drops the flows (counted). Nothing is evaluated as code. Decisions are cached
per distinct exporter (address, name) and per distinct interface (exporter, name,
description, speed), so a batch costs a few hash passes plus the rules for keys never seen.
A batch the metadata step says is keyed by index (metadata.Described) finds its distinct interfaces by hashing
(exporter, ifIndex) integers once rather than the name and description strings of every row.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from prometheus_client import Counter

from flows.enrich.columns import KeyCache, Profiles, combine, drop_rows, encode, first_rows, replace
from flows.enrich.subnets import as_v6_network
from flows.ratelimit import RateLimitedLog
from flows.regex import Pattern, compile_regex
from flows.schema import BOUNDARIES
from flows.settings import Classifiers, ExporterRule, InterfaceRule

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)

ERRORS = Counter("waxflow_classifier_errors_total", "classification errors, by reason "
                 "(invalid_boundary: a template gave a boundary other than external/internal; "
                 "exception: a key left unclassified by an unexpected error)", ["reason"])
REJECTED = Counter("waxflow_classifier_rejected_flows_total", "flows dropped by a reject rule, "
                   "by classifier (exporter, interface)", ["classifier"])

EXPORTER_ATTRIBUTES = ("group", "role", "site", "region", "tenant")
INTERFACE_ATTRIBUTES = ("connectivity", "provider", "boundary", "name", "description")
INTERFACE_FIELDS = ("IfName", "IfDescription", "IfSpeed")
"""The batch columns (In/Out) keying an interface, with the exporter."""
LOWER_CASED = ("connectivity", "provider")


@dataclass
class Rule:
    """One compiled rule: regexes on named fields, optional subnet and speed range, templates."""

    regexes: list[tuple[str, Pattern]]
    subnet: tuple[int, int] | None  # (network, mask) on the 16-byte address as an integer
    speed: tuple[int, int]
    templates: dict[str, string.Template] = field(default_factory=dict)
    reject: bool = False

    def match(self, fields: dict[str, Any], address: bytes) -> dict[str, str] | None:
        """The named groups of the rule's regexes when every condition holds, else None."""
        if self.subnet is not None:
            network, mask = self.subnet
            if int.from_bytes(address, "big") & mask != network:
                return None
        if not self.speed[0] <= fields.get("speed", 0) <= self.speed[1]:
            return None
        groups: dict[str, str] = {}
        for name, pattern in self.regexes:
            found = pattern.search(fields[name])
            if found is None:
                return None
            groups.update({k: v or "" for k, v in found.groupdict().items()})
        return groups


def compile_rule(rule: ExporterRule | InterfaceRule, regex_fields: dict[str, str],
                 subnet_field: str) -> Rule:
    """regex_fields: match field → the key-field it is searched in."""
    regexes = [(target, compile_regex(getattr(rule.match, name)))
               for name, target in regex_fields.items() if getattr(rule.match, name) is not None]
    subnet = None
    if getattr(rule.match, subnet_field) is not None:
        network = as_v6_network(getattr(rule.match, subnet_field))
        subnet = (int(network.network_address), int(network.netmask))
    low, high = getattr(rule.match, "speed_min", None), getattr(rule.match, "speed_max", None)
    speed = (0 if low is None else low, 2**64 if high is None else high)
    templates = {k: string.Template(v) for k, v in rule.set.model_dump(exclude_none=True).items()}
    return Rule(regexes, subnet, speed, templates, rule.reject)


def decide(rules: Sequence[Rule], attributes: Sequence[str], fields: dict[str, Any],
           address: bytes) -> tuple[dict[str, str], bool]:
    """(decided attributes, rejected): the first rule deciding an attribute wins; rules keep
    running after every attribute is decided only while a reject rule may still follow."""
    decided: dict[str, str] = {}
    last_reject = max((i for i, r in enumerate(rules) if r.reject), default=-1)
    for i, rule in enumerate(rules):
        if len(decided) == len(attributes) and i > last_reject:
            break
        groups = rule.match(fields, address)
        if groups is None:
            continue
        if rule.reject:
            return decided, True
        for attribute, template in rule.templates.items():
            if attribute in decided:
                continue
            value = template.substitute(groups)
            if attribute in LOWER_CASED:
                value = value.lower()
            if attribute == "boundary" and value not in BOUNDARIES[1:]:
                ERRORS.labels("invalid_boundary").inc()
                _ratelimited(logging.WARNING, "boundary", "classifier: boundary %r is neither "
                             "external nor internal; left undecided", value)
                continue
            decided[attribute] = value
    return decided, False


def values_at(distinct: pa.Array, index: np.ndarray, rows: np.ndarray) -> list:
    """The values of `rows` as Python objects, from a column's distinct values and row index."""
    return distinct.take(pa.array(index[rows])).to_pylist()


class Exporters:
    """The distinct (exporter address, exporter name) keys of a batch, shared by both classifiers;
    `by_index`: the batch's metadata columns are functions of its exporter and ifIndexes."""

    def __init__(self, batch: pa.RecordBatch, by_index: bool = False) -> None:
        self.by_index = by_index
        addresses, address_values = encode(batch.column("ExporterAddress"))
        if self.by_index:  # the name is a function of the address
            self.inverse, first = addresses, first_rows(addresses, len(address_values))
            self.keys = list(zip(address_values.to_pylist(),
                                 batch.column("ExporterName").take(pa.array(first)).to_pylist()))
        else:
            names, name_values = encode(batch.column("ExporterName"))
            self.inverse, first = combine([addresses, names], [len(address_values), len(name_values)])
            self.keys = list(zip(values_at(address_values, addresses, first),
                                 values_at(name_values, names, first)))
        self.count = len(self.keys)


class _Classifier:
    """Shared part: compiled rules, cached decisions per key, guarded resolution."""

    kind = ""
    attributes: tuple[str, ...] = ()

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.profiles = Profiles((*self.attributes, "rejected"))
        self.cache = KeyCache(self.kind, self.profiles, self.resolve)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def fields(self, key: tuple) -> tuple[dict[str, Any], bytes]:
        raise NotImplementedError

    def profile(self, key: tuple, decided: dict[str, str], rejected: bool) -> tuple:
        raise NotImplementedError

    def resolve(self, key: tuple) -> tuple:
        fields, address = self.fields(key)
        try:
            decided, rejected = decide(self.rules, self.attributes, fields, address)
        except Exception as err:  # a bad key must not stop the dataflow
            ERRORS.labels("exception").inc()
            _ratelimited(logging.ERROR, "exception", "classifier (%s): %r left unclassified: %s",
                         self.kind, key, err)
            decided, rejected = {}, False
        return self.profile(key, decided, rejected)


class ExporterClassifier(_Classifier):
    kind = "exporter"
    attributes = EXPORTER_ATTRIBUTES

    def __init__(self, rules: Sequence[ExporterRule]) -> None:
        super().__init__([compile_rule(r, {"name": "name"}, "subnet") for r in rules])

    def fields(self, key: tuple) -> tuple[dict[str, Any], bytes]:
        address, name = key
        return {"name": name}, address

    def profile(self, key: tuple, decided: dict[str, str], rejected: bool) -> tuple:
        return (*(decided.get(a, "") for a in self.attributes), rejected)

    def ids(self, exporters: Exporters) -> np.ndarray:
        """Profile id per row."""
        return self.cache.ids(exporters.keys)[exporters.inverse]

    def columns(self, ids: np.ndarray, constant: bool) -> dict[str, pa.Array]:
        columns = {}
        for attribute in self.attributes:
            values = self.profiles.take_strings(attribute, ids, constant)
            if values is not None:
                columns[f"Exporter{attribute.capitalize()}"] = values
        return columns


class InterfaceClassifier(_Classifier):
    kind = "interface"
    attributes = INTERFACE_ATTRIBUTES

    def __init__(self, rules: Sequence[InterfaceRule]) -> None:
        regex_fields = {"exporter": "exporter", "name": "name", "description": "description"}
        super().__init__([compile_rule(r, regex_fields, "exporter_subnet") for r in rules])
        self.renames = {a for r in rules for a in ("name", "description")
                        if getattr(r.set, a) is not None}

    def fields(self, key: tuple) -> tuple[dict[str, Any], bytes]:
        address, exporter, name, description, speed = key
        return {"exporter": exporter, "name": name, "description": description,
                "speed": speed}, address

    def profile(self, key: tuple, decided: dict[str, str], rejected: bool) -> tuple:
        _, _, name, description, _ = key
        boundary = BOUNDARIES.index(decided["boundary"]) if "boundary" in decided else 0
        return (decided.get("connectivity", ""), decided.get("provider", ""), boundary,
                decided.get("name", name), decided.get("description", description), rejected)

    def ids(self, batch: pa.RecordBatch, exporters: Exporters) -> np.ndarray:
        """Profile id per row and side: rows [0, n) are the input interfaces, [n, 2n) the
        output ones (both sides are keyed together)."""
        n = batch.num_rows
        exporter_rows = np.tile(exporters.inverse, 2)
        if exporters.by_index:
            ifindex = np.concatenate([batch.column(f"{side}IfIndex").to_numpy(zero_copy_only=False)
                                      for side in ("In", "Out")])
            inverse, distinct = encode(pa.array((exporter_rows.astype(np.uint64) << np.uint64(32))
                                                | ifindex.astype(np.uint64)))
            first = first_rows(inverse, len(distinct))
            interfaces = first_values(batch, first)
        else:
            encoded = [encode(pa.concat_arrays([batch.column(f"In{c}"), batch.column(f"Out{c}")]))
                       for c in INTERFACE_FIELDS]
            inverse, first = combine([exporter_rows, *(index for index, _ in encoded)],
                                     [exporters.count, *(len(values) for _, values in encoded)])
            interfaces = zip(*(values_at(values, index, first) for index, values in encoded))
        exporter_keys = [exporters.keys[i] for i in exporters.inverse[first % n].tolist()]
        keys = [(*exporter, *interface) for exporter, interface in zip(exporter_keys, interfaces)]
        return self.cache.ids(keys)[inverse]

    def rewritten(self) -> list[str]:
        """The columns `columns` replaces whatever they hold (a row drop need not copy them)."""
        return [f"{side}If{attribute.capitalize()}" for attribute in self.renames
                if self.profiles.strings(attribute) is not None for side in ("In", "Out")]

    def columns(self, batch: pa.RecordBatch, ids: np.ndarray) -> dict[str, pa.Array]:
        n = batch.num_rows
        columns: dict[str, pa.Array] = {}
        for side, side_ids in (("In", ids[:n]), ("Out", ids[n:])):
            for attribute in ("connectivity", "provider"):
                values = self.profiles.take_strings(attribute, side_ids)
                if values is not None:
                    columns[f"{side}If{attribute.capitalize()}"] = values
            columns[f"{side}IfBoundary"] = pa.array(self.profiles.numbers("boundary", np.uint8)[side_ids])
            for attribute in self.renames:  # profiles hold the new name, or the one in the key
                column = f"{side}If{attribute.capitalize()}"
                values = self.profiles.take_strings(attribute, side_ids)
                columns[column] = values if values is not None else batch.column(column)
        return columns


def first_values(batch: pa.RecordBatch, first: np.ndarray) -> list[tuple]:
    """(name, description, speed) of the interface at each of `first` rows, counted over both
    sides: [0, n) input interfaces, [n, 2n) output ones."""
    n = batch.num_rows
    out: list[tuple] = [()] * len(first)
    inside = first < n
    for side, chosen, offset in (("In", inside, 0), ("Out", ~inside, n)):
        rows = pa.array(first[chosen] - offset)
        values = zip(*(batch.column(f"{side}{c}").take(rows).to_pylist() for c in INTERFACE_FIELDS))
        for position, value in zip(np.flatnonzero(chosen).tolist(), values):
            out[position] = value
    return out


class Classification:
    """Exporter then interface classification; rejected flows are counted and dropped."""

    def __init__(self, cfg: Classifiers) -> None:
        self.exporters = ExporterClassifier(cfg.exporter)
        self.interfaces = InterfaceClassifier(cfg.interface)

    def __bool__(self) -> bool:
        return bool(self.exporters) or bool(self.interfaces)

    def apply(self, batch: pa.RecordBatch, keyed_by_index: bool = False) -> pa.RecordBatch:
        """Rows are rejected before the classes are written: the drop then copies the batch
        with fewer filled columns. `keyed_by_index`: see metadata.Described."""
        n = batch.num_rows
        if n == 0:
            return batch
        exporters = Exporters(batch, keyed_by_index)
        rejected = np.zeros(n, bool)
        if self.exporters:
            exporter_ids = self.exporters.ids(exporters)
            rejected = self.exporters.profiles.numbers("rejected", bool)[exporter_ids]
            if rejected.any():
                REJECTED.labels("exporter").inc(int(rejected.sum()))
        if self.interfaces:
            interface_ids = self.interfaces.ids(batch, exporters)
            by_interface = self.interfaces.profiles.numbers("rejected", bool)[interface_ids]
            by_interface = by_interface[:n] | by_interface[n:]
            newly = by_interface & ~rejected
            if newly.any():
                REJECTED.labels("interface").inc(int(newly.sum()))
            rejected |= by_interface
        if rejected.any():
            keep = ~rejected
            batch = drop_rows(batch, keep, self.interfaces.rewritten() if self.interfaces else ())
            if self.exporters:
                exporter_ids = exporter_ids[keep]
            if self.interfaces:
                interface_ids = interface_ids[np.concatenate([keep, keep])]
        columns = {}
        if self.exporters:
            columns.update(self.exporters.columns(exporter_ids, exporters.count == 1))
        if self.interfaces:
            columns.update(self.interfaces.columns(batch, interface_ids))
        return replace(batch, columns)
