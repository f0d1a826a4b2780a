"""The benchmark's one custom action: look an address up in a local 100,000-entry IOC set.

Loaded by ``quell worker`` through ``QUELL_PLUGINS=bench.engine_actions``; the IOC file is
``QUELL_BENCH_IOC`` (one address per line).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from quell.sdk import ActionContext, ActionInput, ActionOutput, Connector, RiskLevel, action


@cache
def _iocs() -> frozenset[str]:
    path = Path(os.environ["QUELL_BENCH_IOC"])
    return frozenset(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


class LookupIn(ActionInput):
    """An address."""

    ip: str


class LookupOut(ActionOutput):
    """Whether it is a known bad address."""

    malicious: bool


class Intel(Connector):
    """A local indicator set, as the benchmark's stand-in for enrichment."""

    name = "benchintel"

    @action("lookup", risk=RiskLevel.READ, idempotent=True, title="Look an IP up in the IOC set")
    async def lookup(self, ctx: ActionContext, params: LookupIn) -> LookupOut:
        """Whether ``ip`` is in the set."""
        return LookupOut(malicious=params.ip in _iocs())
