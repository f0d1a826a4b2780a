"""``python -m bench intel``: a million indicators in, then lookups of mixed observables.

What it measures, on the embedded default (SQLite, WAL) unless ``--database`` names another:

1. **Import.** Synthetic STIX 2.1 bundles (``--bundle-size`` indicators each, as a TAXII page
   or a feed file would bring them) go through the real importer: JSON, the pattern parser,
   normalization, and one transaction per bundle into the store. The mix: 5% CIDR ranges
   (``ISSUBSET``), 20% domains, and addresses, URLs, hashes and e-mail addresses for the rest.
   ``import_per_s`` is indicators over wall time, parse and write together.
2. **Index.** The in-memory index every enriching process keeps is built from the store.
3. **Lookups.** Observables as alerts carry them (a third of them known: addresses inside
   ranges, subdomains of listed domains, listed hashes and URLs; the rest unknown) go through
   what enrichment does for each observable of a new alert (``AlertEnricher.match``): the
   allow-list check (1,000 entries), then the indicator lookup, each one timed (the verdict's
   reasons are then written for the few that match). ``lookups_per_s`` is the sustained rate
   of the loop; ``p99_lookup_ms`` the 99th percentile of single lookups.

``rss_mb`` is the process's resident memory once the index is built. No peer is run: the
issue's targets are absolute (20,000 indicators/s imported, 200,000 lookups/s, p99 < 1 ms).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.report import emit, table
from quell.aio import tune_gc
from quell.clock import SystemClock
from quell.intel.enrich import AlertEnricher
from quell.intel.stix import parse_bundle
from quell.intel.store import IntelStore
from quell.store import migrate
from quell.store.database import Database

ALLOWED = 500  # allow-list entries of each kind (domains, /24 ranges)
_TLDS = ("com", "net", "org", "info", "io", "ru", "xyz", "top")
_WORDS = ("mail", "cdn", "login", "secure", "update", "api", "portal", "files", "account", "web")


def _ip(rng: random.Random) -> str:
    return (
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    )


def _domain(n: int) -> str:
    return f"{_WORDS[n % len(_WORDS)]}{n:x}.example-{n % 97}.{_TLDS[n % len(_TLDS)]}"


def _net(n: int) -> str:
    # Distinct ranges, /16 to /28, spread over the space.
    length = 16 + n % 13
    base = (n * 2654435761) % (1 << 32) >> (32 - length) << (32 - length)
    return f"{base >> 24}.{(base >> 16) & 255}.{(base >> 8) & 255}.{base & 255}/{length}"


def _sha256(n: int) -> str:
    return f"{n:064x}"


def indicator_values(count: int, seed: int = 7) -> Iterator[tuple[str, str]]:
    """(STIX comparison, kind) for ``count`` indicators in the benchmark's mix."""
    rng = random.Random(seed)
    for n in range(count):
        slot = n % 20
        if slot == 0:
            yield f"[ipv4-addr:value ISSUBSET '{_net(n)}']", "net"
        elif slot <= 4:
            yield f"[domain-name:value = '{_domain(n)}']", "domain"
        elif slot <= 9:
            yield f"[ipv4-addr:value = '{_ip(rng)}']", "ipv4"
        elif slot <= 12:
            yield f"[url:value = 'http://{_domain(n)}/p/{n}?id={n % 1000}']", "url"
        elif slot <= 17:
            yield f"[file:hashes.'SHA-256' = '{_sha256(n)}']", "sha256"
        elif slot == 18:
            yield f"[file:hashes.MD5 = '{n:032x}']", "md5"
        else:
            yield f"[email-addr:value = 'sender{n}@{_domain(n)}']", "email"


def bundle(start: int, patterns: list[str]) -> bytes:
    """A STIX 2.1 bundle of indicators for ``patterns``."""
    objects: list[dict[str, Any]] = []
    for offset, pattern in enumerate(patterns):
        number = start + offset
        objects.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": f"indicator--00000000-0000-4000-8000-{number:012x}",
                "created": "2026-11-01T00:00:00.000Z",
                "modified": "2026-11-01T00:00:00.000Z",
                "name": f"bench {number}",
                "indicator_types": ["malicious-activity"],
                "pattern": pattern,
                "pattern_type": "stix",
                "valid_from": "2026-11-01T00:00:00Z",
                "confidence": 40 + number % 60,
                "labels": ["bench"],
            }
        )
    return orjson.dumps(
        {
            "type": "bundle",
            "id": f"bundle--00000000-0000-4000-8000-{start:012x}",
            "objects": objects,
        }
    )


def observables(count: int, indicators: int, seed: int = 11) -> list[tuple[str, str]]:
    """Observables to look up: a third match something in the store, the rest do not."""
    rng = random.Random(seed)
    found: list[tuple[str, str]] = []
    for i in range(count):
        n = rng.randrange(indicators)
        known = i % 3 == 0
        kind = i % 6
        if kind == 0:  # an address: inside a listed range, or anywhere
            if known:
                net = _net(n - n % 20)
                address, length = net.split("/")
                parts = [int(p) for p in address.split(".")]
                parts[3] |= 1 if int(length) < 32 else 0
                found.append(("ipv4", ".".join(map(str, parts))))
            else:
                found.append(("ipv4", _ip(rng)))
        elif kind == 1:
            base = _domain(n - n % 20 + 1) if known else f"unknown{n}.example.net"
            found.append(("domain", f"www.{base}" if i % 2 else base))
        elif kind == 2:
            m = n - n % 20 + 10
            url = f"http://{_domain(m)}/p/{m}?id={m % 1000}" if known else f"http://x{n}.test/"
            found.append(("url", url))
        elif kind == 3:
            found.append(
                ("sha256", _sha256(n - n % 20 + 13) if known else f"{n + (1 << 200):064x}")
            )
        elif kind == 4:
            found.append(("email", f"sender{n - n % 20 + 19}@{_domain(n - n % 20 + 19)}"))
        else:
            found.append(("md5", f"{n - n % 20 + 18:032x}" if known else f"{n + (1 << 100):032x}"))
    return found


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench intel", description=__doc__)
    parser.add_argument("--indicators", type=int, default=1_000_000)
    parser.add_argument("--bundle-size", type=int, default=50_000)
    parser.add_argument("--lookups", type=int, default=300_000)
    parser.add_argument("--workdir", type=Path, help="where the SQLite file goes (default: tmp)")
    parser.add_argument("--lookup-phase", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.indicators <= 5_000_000 or not 1 <= args.lookups <= 10_000_000:
        parser.error("--indicators is 1..5,000,000 and --lookups 1..10,000,000")
    if args.lookup_phase:
        return _lookup_phase(args)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        args.workdir = workdir
        db = Database(_url(workdir))
        migrate.upgrade(db)
        try:
            imported = _import_phase(db, args)
        finally:
            db.dispose()
        # The lookups run in a process of their own that only builds the index from the
        # store, as a server does: its memory is the index's, not the import's leftovers.
        child = subprocess.run(
            [sys.executable, "-m", "bench", "intel", "--lookup-phase", "--workdir", str(workdir),
             "--indicators", str(args.indicators), "--lookups", str(args.lookups)],
            capture_output=True, text=True, check=True, timeout=3600,
        )  # fmt: skip
        looked = json.loads(child.stdout.strip().splitlines()[-1])
    _report(args, imported, looked)
    return 0


def _url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'intel-bench.db'}"


def _import_phase(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    tune_gc()  # as `quell serve`, `quell worker` (feed pulls) and `quell intel import` run
    store = IntelStore(db, SystemClock())
    kinds: dict[str, int] = {}
    patterns: list[str] = []
    for pattern, kind in indicator_values(args.indicators):
        patterns.append(pattern)
        kinds[kind] = kinds.get(kind, 0) + 1
    bundles = [
        bundle(start, patterns[start : start + args.bundle_size])
        for start in range(0, len(patterns), args.bundle_size)
    ]
    del patterns
    added = unsupported = 0
    parse_s = 0.0
    began = time.perf_counter()
    for data in bundles:
        t0 = time.perf_counter()
        parsed = parse_bundle(data)
        parse_s += time.perf_counter() - t0
        report = store.apply("bench-feed", parsed)
        added += report.added
        unsupported += report.unsupported
    import_s = time.perf_counter() - began
    # An allow-list as a SOC keeps one: its own ranges and domains, so that every lookup
    # pays for the allow-list check as enrichment does.
    for n in range(ALLOWED):
        store.allow("domain", f"corp{n}.example", "ours", by="bench")
        store.allow("ipv4", f"10.{n % 256}.{n // 256}.0/24", "ours", by="bench")
    return {
        "kinds": kinds,
        "added": added,
        "unsupported": unsupported,
        "import_s": import_s,
        "parse_s": parse_s,
    }


def _lookup_phase(args: argparse.Namespace) -> int:
    db = Database(_url(args.workdir))
    try:
        enricher = AlertEnricher(IntelStore(db, SystemClock()))
        began = time.perf_counter()
        enricher.refresh()
        index_s = time.perf_counter() - began
    finally:
        db.dispose()
    index = enricher.index
    gc.collect()
    tune_gc()  # as `quell serve` and `quell worker` run
    rss = _rss_mb()
    wanted = observables(args.lookups, args.indicators)
    # What enrichment does for each observable of every new alert (AlertEnricher.match): the
    # allow-list check, then the indicators it matches.
    match = enricher.match
    now = time.time()
    began = time.perf_counter()
    matched = 0
    for type_, value in wanted:
        if match(type_, value, now)[1]:
            matched += 1
    loop_s = time.perf_counter() - began
    timings: list[int] = []
    clock = time.perf_counter_ns
    for type_, value in wanted:
        t = clock()
        match(type_, value, now)
        timings.append(clock() - t)
    timings.sort()
    print(
        json.dumps(
            {
                "index_s": index_s,
                "entries": index.size,
                "rss_mb": rss,
                "lookups_per_s": args.lookups / loop_s,
                "matched": matched,
                "p50_ms": timings[len(timings) // 2] / 1e6,
                "p99_ms": timings[int(len(timings) * 0.99)] / 1e6,
            }
        )
    )
    return 0


def _report(args: argparse.Namespace, imported: dict[str, Any], looked: dict[str, Any]) -> None:
    import_per_s = args.indicators / imported["import_s"]
    table(
        f"Intel: {args.indicators:,} indicators in STIX bundles of {args.bundle_size:,} "
        f"into SQLite, then {args.lookups:,} lookups in process",
        ["figure", "value", "target"],
        [
            ["indicators added", imported["added"], ""],
            ["unsupported", imported["unsupported"], ""],
            *(
                [f"  of which {kind}", count, ""]
                for kind, count in sorted(imported["kinds"].items())
            ),
            ["import, indicators/s", import_per_s, ">= 20,000"],
            ["  of it parsing, s", imported["parse_s"], ""],
            ["  of it the database, s", imported["import_s"] - imported["parse_s"], ""],
            ["index build from the store, s", looked["index_s"], ""],
            ["index entries", looked["entries"], ""],
            ["lookups/s", looked["lookups_per_s"], ">= 200,000"],
            ["lookups that matched", looked["matched"], ""],
            ["p50 lookup, µs", looked["p50_ms"] * 1000, ""],
            ["p99 lookup, µs", looked["p99_ms"] * 1000, "< 1,000"],
            ["RSS of a process holding the index, MB", looked["rss_mb"], ""],
        ],
    )
    emit(
        {
            "benchmark": "intel",
            "backend": "sqlite",
            "indicators": args.indicators,
            "added": imported["added"],
            "import_per_s": round(import_per_s),
            "parse_s": round(imported["parse_s"], 2),
            "index_build_s": round(looked["index_s"], 2),
            "lookups": args.lookups,
            "matched": looked["matched"],
            "lookups_per_s": round(looked["lookups_per_s"]),
            "p50_lookup_ms": round(looked["p50_ms"], 4),
            "p99_lookup_ms": round(looked["p99_ms"], 4),
            "rss_mb": looked["rss_mb"],
        }
    )
