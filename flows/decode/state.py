"""Per-exporter decoder state: templates, sampling rates, data held for a missing template.

One ExporterState per exporter address. It is a plain picklable object (the outlet keeps it as
Bytewax state, keyed by exporter, and recovers it from snapshots) and it is bounded: at most
`max_templates` templates (least recently used evicted first, counted), a bounded table of
sampling rates and a short queue of data sets waiting for their template.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from flows.decode import metrics
from flows.decode.columns import address_bytes

MAX_TEMPLATES = 1024
MAX_SAMPLERS = 256
MAX_HELD_SETS = 32
HOLD_SECONDS = 30.0
# Bytes, so that a per-exporter snapshot stays under 1 MiB whatever the exporter sends: the
# templates as pickled, the held data sets' bodies; the template-set cache (not snapshotted)
# by its bodies' bytes.
MAX_TEMPLATE_BYTES = 768 * 1024
MAX_HELD_BYTES = 128 * 1024
MAX_SEEN_BYTES = 256 * 1024

TemplateKey = tuple[int, int, int]  # (version, source id / observation domain, template id)
DomainKey = tuple[int, int]  # (version, source id / observation domain)


class ExporterState:
    """What the decoder remembers about one exporter between datagrams."""

    def __init__(self, exporter: str, max_templates: int = MAX_TEMPLATES) -> None:
        self.exporter = exporter
        self.address = address_bytes(exporter)
        self.max_templates = max_templates
        self.templates: OrderedDict[TemplateKey, Any] = OrderedDict()
        # Raw template-set bodies already parsed: most exporters resend the same templates
        # in every datagram, and recognising them by their bytes skips re-parsing.
        self.seen_template_sets: dict[tuple[int, int, int, bytes], tuple] = {}
        self.domain_rates: OrderedDict[DomainKey, int] = OrderedDict()
        self.sampler_rates: OrderedDict[tuple[int, int, int], int] = OrderedDict()
        self.system_init_ms: OrderedDict[DomainKey, int] = OrderedDict()
        self.held: deque = deque()
        self.template_bytes: dict[TemplateKey, int] = {}
        self.templates_total = 0  # sum of template_bytes, kept as they change
        self.seen_bytes = 0
        self.held_bytes = 0

    @property
    def approx_bytes(self) -> int:
        """What this state holds, about: its templates as pickled, held sets, cached set bodies."""
        return 4096 + self.templates_total + self.held_bytes + self.seen_bytes

    def __getstate__(self) -> dict[str, Any]:
        # The template-set cache is rebuilt from the next datagrams: not worth a snapshot.
        state = dict(self.__dict__)
        state["seen_template_sets"], state["seen_bytes"] = {}, 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "template_bytes" not in state:  # a snapshot from before the byte bounds
            self.template_bytes = {key: _pickled_size(t) for key, t in self.templates.items()}
            self.seen_bytes = 0
            self.held_bytes = sum(len(h[1]) for h in self.held)
        self.templates_total = sum(self.template_bytes.values())

    # -- templates -------------------------------------------------------------------------
    def template(self, key: TemplateKey) -> Any:
        return self.templates.get(key)

    def learn(self, key: TemplateKey, template: Any) -> None:
        """Store a template; evict the least recently learnt one past the bound."""
        templates = self.templates
        if key in templates:
            templates.move_to_end(key)
        templates[key] = template
        self._resize(key, _pickled_size(template))
        evicted = False
        while len(templates) > 1 and (len(templates) > self.max_templates
                                      or self.templates_total > MAX_TEMPLATE_BYTES):
            old, _ = templates.popitem(last=False)
            self._resize(old, 0)
            metrics.TEMPLATE_EVICTIONS.inc()
            evicted = True
        if evicted:  # cached template sets may name evicted templates: keep none of them alive
            self._forget_seen()

    def _resize(self, key: TemplateKey, size: int) -> None:
        """Record a template's size (0: gone) and keep the running total."""
        old = self.template_bytes.pop(key, 0)
        if size:
            self.template_bytes[key] = size
        self.templates_total += size - old

    def withdraw(self, key: TemplateKey) -> None:
        self.templates.pop(key, None)
        self._resize(key, 0)
        metrics.TEMPLATE_WITHDRAWALS.inc()

    def withdraw_all(self, version: int, domain: int, options: bool) -> None:
        for key in [k for k, t in self.templates.items() if k[:2] == (version, domain) and t.options == options]:
            del self.templates[key]
            self._resize(key, 0)
        self._forget_seen()
        metrics.TEMPLATE_WITHDRAWALS.inc()

    def _forget_seen(self) -> None:
        self.seen_template_sets.clear()
        self.seen_bytes = 0

    def remember_template_set(self, key: tuple, learnt: tuple) -> None:
        size = len(key[3])
        if len(self.seen_template_sets) >= 4 * self.max_templates or self.seen_bytes + size > MAX_SEEN_BYTES:
            self._forget_seen()
        if size <= MAX_SEEN_BYTES and key not in self.seen_template_sets:
            self.seen_template_sets[key] = learnt
            self.seen_bytes += size

    def known_template_set(self, key: tuple) -> bool:
        """True when this exact template set was parsed before and all its templates are current;
        they are then marked recently used, as parsing the refresh would (the eviction order must
        not depend on this cache, which is not snapshotted: a recovery replay starts without it)."""
        learnt = self.seen_template_sets.get(key)
        if learnt is None:
            return False
        templates = self.templates
        if not all(templates.get(k) is t for k, t in learnt):
            return False
        for k, _ in learnt:
            templates.move_to_end(k)
        return True

    # -- sampling and time -----------------------------------------------------------------
    def set_domain_rate(self, domain: DomainKey, rate: int) -> None:
        _bounded_put(self.domain_rates, domain, rate, MAX_SAMPLERS)

    def set_sampler_rate(self, sampler: tuple[int, int, int], rate: int) -> None:
        _bounded_put(self.sampler_rates, sampler, rate, MAX_SAMPLERS)

    def set_system_init(self, domain: DomainKey, ms: int) -> None:
        _bounded_put(self.system_init_ms, domain, ms, MAX_SAMPLERS)

    # -- data waiting for its template -----------------------------------------------------
    def hold(self, key: TemplateKey, body: bytes, meta: tuple, received: float) -> None:
        """Keep a data set briefly in case its template follows (bounded; the oldest expire)."""
        held = self.held
        if len(body) > MAX_HELD_BYTES:
            metrics.HELD_BY_OUTCOME["expired"].inc()
            return
        while held and (len(held) >= MAX_HELD_SETS or received - held[0][3] > HOLD_SECONDS
                        or self.held_bytes + len(body) > MAX_HELD_BYTES):
            self.held_bytes -= len(held.popleft()[1])
            metrics.HELD_BY_OUTCOME["expired"].inc()
        held.append((key, body, meta, received))
        self.held_bytes += len(body)
        metrics.HELD_BY_OUTCOME["held"].inc()

    def take_held(self, key: TemplateKey) -> list[tuple[bytes, tuple]]:
        """Remove and return the data sets held for this template."""
        if not self.held or not any(h[0] == key for h in self.held):
            return []
        taken = [(body, meta) for k, body, meta, _ in self.held if k == key]
        self.held = deque(h for h in self.held if h[0] != key)
        self.held_bytes -= sum(len(body) for body, _ in taken)
        metrics.HELD_BY_OUTCOME["recovered"].inc(len(taken))
        return taken


def _pickled_size(template: Any) -> int:
    import pickle

    return len(pickle.dumps(template, protocol=pickle.HIGHEST_PROTOCOL))


def _bounded_put(table: OrderedDict, key: Any, value: Any, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)
