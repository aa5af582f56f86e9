"""Mitigation routes sent through GoBGP: `gobgp` (Debian's gobgpd package) against a running
`gobgpd`'s gRPC API, which announces them to its BGP peers. The routes and command lines are
flows/mitigation.py's; this runs them, with a timeout, counted and logged (rate-limited). A
dry run logs what it would send and sends nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

from prometheus_client import Counter

from flows.mitigation import Route, gobgp_args
from flows.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)
ROUTES = Counter("waxflow_mitigation_routes_total", "Mitigation routes sent to GoBGP, by kind, verb and result",
                 ["kind", "verb", "result"])


class BGPError(RuntimeError):
    pass


class GoBGP:
    def __init__(self, host: str = "127.0.0.1", port: int = 50051, cli: str = "gobgp", timeout: float = 10.0,
                 dry_run: bool = True) -> None:
        self.base = [cli, "-u", host, "-p", str(port)]
        self.timeout, self.dry_run = timeout, dry_run
        if not dry_run and shutil.which(cli) is None:
            raise BGPError(f"{cli!r} is not installed (Debian: apt-get install gobgpd)")

    def _run(self, args: list[str]) -> str:
        try:
            done = subprocess.run(self.base + args, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BGPError(f"gobgp {' '.join(args[:6])}: no answer in {self.timeout:g} s") from None
        if done.returncode != 0:
            raise BGPError(f"gobgp {' '.join(args[:6])}: {(done.stderr or done.stdout).strip()[:300]}")
        return done.stdout

    def send(self, verb: str, route: Route) -> None:
        """verb: announce or withdraw."""
        args = gobgp_args(route, add=verb == "announce")
        if self.dry_run:
            log.info("mitigation (dry run): would %s %s %s", verb, route.kind, route.prefix)
            ROUTES.labels(route.kind, verb, "dry_run").inc()
            return
        try:
            self._run(args)
        except BGPError as err:
            ROUTES.labels(route.kind, verb, "failed").inc()
            _ratelimited(logging.WARNING, f"bgp:{verb}", "mitigation: %s", err)
            raise
        ROUTES.labels(route.kind, verb, "sent").inc()
        log.info("mitigation: %s %s %s", verb, route.kind, route.prefix)

    def routes(self, family: str) -> dict[str, Any]:
        """The daemon's RIB for an address family (ipv4, ipv6, ipv4-flowspec, ...), as gobgp's JSON."""
        return json.loads(self._run(["-j", "global", "rib", "-a", family]) or "{}")
