"""Ingest: synthetic alerts through the real intake paths, on the embedded SQLite default.

Workload (seeded, so every run ingests the same alerts): ``--alerts`` records (200,000 by
default) in five formats (Suricata EVE, Zeek notice, Wazuh, Elastic ECS, CEF), of which 30% are
repeats of an earlier alert a few minutes later (deduplication), grouped into campaigns of 1 to
50 alerts that share a host, a user or a source IP (so correlation forms incidents of 1 to 50
alerts). Half the records go through each path:

  file   the code behind ``quell ingest FILE`` (streamed NDJSON / text, 2,000-record batches)
  http   ``quell serve`` in its own process; 4 clients POST NDJSON batches of 1,000 records
         to ``/api/ingest/{source}`` with a token; latency is receipt to acknowledgement,
         which is after the batch's alerts are stored and assigned to incidents; a batch
         answered 503 (backlog full, or the database busy) is sent again after its
         Retry-After, and counted (``http_retried_batches``)

The floor, in the same run, is the least any Python ingester must do: ``orjson.loads`` each
record and insert it into SQLite in the same batches, with nothing else (no parsing into a
model, no observables, no dedup, no correlation).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.report import emit, peak_rss_mb, table

FORMATS = ("suricata", "zeek", "wazuh", "ecs", "cef")
BATCH = 2_000
HTTP_BATCH = 1_000
HTTP_CLIENTS = 4
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
GAP = timedelta(minutes=90)  # between campaigns: none falls in another's window


@dataclass(frozen=True)
class Alert:
    """One synthetic alert, before it is rendered in a format."""

    time: datetime
    rule: int
    host: str
    user: str
    src: str
    dst: str
    sha256: str
    format: str
    path: str  # "file" or "http"


def campaigns(total: int, rng: random.Random) -> Iterator[Alert]:
    """Alerts in campaigns of 1..50 sharing keys; 30% of them repeats of an earlier alert."""
    made = 0
    campaign = 0
    # Campaigns run back to back and end in the past (Quell refuses event times a year or more
    # ahead of their receipt): start far enough back for the most campaigns ``total`` can make.
    clock = datetime.now(UTC).replace(second=0, microsecond=0) - GAP * (total // 4 + 1)
    while made < total:
        campaign += 1
        size = min(int(rng.paretovariate(1.2)) if rng.random() < 0.7 else rng.randint(1, 50), 50)
        host = f"host-{campaign:06d}.corp.example"
        user = f"user{campaign:06d}"
        src = f"10.{campaign // 65536 % 256}.{campaign // 256 % 256}.{campaign % 256}"
        sha = f"{campaign:064x}"
        clock += GAP
        path = "file" if campaign % 2 else "http"
        originals: list[Alert] = []
        for n in range(size):
            if made >= total:
                return
            if originals and rng.random() < 0.3:
                first = rng.choice(originals)
                # The same detection again a little later, from the same sensor.
                alert = Alert(
                    first.time + timedelta(minutes=rng.randint(1, 20)),
                    first.rule,
                    first.host,
                    first.user,
                    first.src,
                    first.dst,
                    first.sha256,
                    first.format,
                    first.path,
                )
            else:
                alert = Alert(
                    clock + timedelta(seconds=30 * n),
                    rng.randint(1, 400),
                    host,
                    user if n % 3 == 0 else f"svc{campaign:06d}-{n % 4}",
                    src,
                    f"203.0.113.{rng.randint(1, 254)}",
                    sha,
                    FORMATS[rng.randrange(len(FORMATS))],
                    path,
                )
                originals.append(alert)
            made += 1
            yield alert


def render(alert: Alert, fmt: str) -> bytes:
    """The alert as a record of ``fmt``."""
    ts = alert.time.isoformat()
    if fmt == "suricata":
        return orjson.dumps(
            {
                "timestamp": ts,
                "event_type": "alert",
                "src_ip": alert.src,
                "src_port": 51000 + alert.rule,
                "dest_ip": alert.dst,
                "dest_port": 443,
                "proto": "TCP",
                "host": alert.host,
                "alert": {
                    "action": "allowed",
                    "gid": 1,
                    "signature_id": 2_000_000 + alert.rule,
                    "rev": 3,
                    "signature": f"ET POLICY synthetic rule {alert.rule}",
                    "category": "Potential Corporate Privacy Violation",
                    "severity": 1 + alert.rule % 3,
                },
                "payload_printable": "x" * 600,
            }
        )
    if fmt == "zeek":
        return orjson.dumps(
            {
                "ts": alert.time.timestamp(),
                "note": f"Scan::Synthetic_{alert.rule}",
                "msg": f"{alert.src} did something notable ({alert.rule}) to {alert.dst}",
                "sub": "synthetic" * 40,
                "src": alert.src,
                "dst": alert.dst,
                "p": 22,
                "actions": ["Notice::ACTION_LOG"],
                "suppress_for": 3600.0,
            }
        )
    if fmt == "wazuh":
        return orjson.dumps(
            {
                "timestamp": ts,
                "rule": {
                    "level": 3 + alert.rule % 10,
                    "description": f"Synthetic host rule {alert.rule}",
                    "id": str(5000 + alert.rule),
                    "groups": ["syscheck", "synthetic"],
                    "mitre": {"id": ["T1110"]},
                },
                "agent": {"id": "001", "name": alert.host, "ip": alert.src},
                "data": {"srcip": alert.dst, "dstuser": alert.user},
                "syscheck": {"path": f"/var/drop{alert.rule}", "sha256_after": alert.sha256},
                "full_log": "File added to the system. " + "y" * 500,
                "location": "syscheck",
            }
        )
    if fmt == "ecs":
        return orjson.dumps(
            {
                "@timestamp": ts,
                "event": {"kind": "alert", "category": ["malware"], "severity": 47},
                "rule": {"id": str(alert.rule), "name": f"Synthetic ECS rule {alert.rule}"},
                "host": {"name": alert.host, "ip": [alert.src]},
                "user": {"name": alert.user},
                "source": {"ip": alert.src, "port": 50000},
                "destination": {"ip": alert.dst, "port": 443},
                "file": {"hash": {"sha256": alert.sha256}},
                "message": "z" * 500,
            }
        )
    return (
        f"CEF:0|Acme|Firewall|1.0|{alert.rule}|Synthetic CEF rule {alert.rule}|{alert.rule % 11}|"
        f"rt={int(alert.time.timestamp() * 1000)} src={alert.src} dst={alert.dst} dpt=445 "
        f"suser={alert.user} dhost={alert.host} act=blocked msg={'w' * 400}"
    ).encode()


def generate(total: int, workdir: Path, seed: int) -> dict[str, dict[str, Path]]:
    """Write the records: for each path (file, http), one file per format."""
    rng = random.Random(seed)
    handles = {
        (path, fmt): (workdir / f"{path}-{fmt}.log").open("wb")
        for path in ("file", "http")
        for fmt in FORMATS
    }
    for alert in campaigns(total, rng):
        handles[(alert.path, alert.format)].write(render(alert, alert.format) + b"\n")
    for handle in handles.values():
        handle.close()
    return {
        path: {fmt: workdir / f"{path}-{fmt}.log" for fmt in FORMATS} for path in ("file", "http")
    }


def floor(files: dict[str, Path], workdir: Path) -> float:
    """Records per second for decode-and-insert only, in the same batches."""
    conn = sqlite3.connect(workdir / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE raw(id INTEGER PRIMARY KEY, doc BLOB)")
    count = 0
    started = time.perf_counter()
    for fmt, path in files.items():
        with path.open("rb") as handle:
            batch: list[tuple[bytes]] = []
            for line in handle:
                if fmt != "cef":
                    orjson.loads(line)
                batch.append((line,))
                if len(batch) >= BATCH:
                    conn.execute("BEGIN")
                    conn.executemany("INSERT INTO raw(doc) VALUES(?)", batch)
                    conn.execute("COMMIT")
                    count += len(batch)
                    batch = []
            if batch:
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO raw(doc) VALUES(?)", batch)
                conn.execute("COMMIT")
                count += len(batch)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def _source_name(fmt: str) -> str:
    return f"bench-{fmt}"


def _spec_for_warmup(runtime: Any) -> Any:
    from quell.ingest.staging import StagingSpec

    source = runtime.sources.ensure(_source_name("suricata"), "file", "suricata")
    return StagingSpec.of(source, runtime.db.backend)


def file_path(files: dict[str, Path], data_dir: Path) -> tuple[float, dict[str, int], float]:
    """Alerts per second through the code behind ``quell ingest`` (in this process)."""
    os.environ["QUELL_DATA_DIR"] = str(data_dir)
    from quell.aio import tune_gc
    from quell.ingest.intake import IntakeResult
    from quell.ingest.parsers import parser_class
    from quell.ingest.records import iter_file_records
    from quell.ingest.staging import StagingPool
    from quell.logs import configure_logging
    from quell.runtime import Runtime
    from quell.settings import LogLevel, load_settings

    configure_logging(level=LogLevel.WARNING)
    pool = StagingPool(WORKERS)  # 1, as `quell ingest --workers auto` on files of 4 MiB+
    tune_gc()  # as `quell ingest file` does
    with Runtime.open(load_settings()) as runtime:
        total = IntakeResult()
        pool.submit(
            _spec_for_warmup(runtime), [], runtime.clock.now(), []
        ).result()  # the worker's start-up is not ingest time
        started = time.perf_counter()
        for fmt, path in files.items():
            source = runtime.sources.ensure(_source_name(fmt), "file", fmt)
            kind = parser_class(fmt).record_kind
            with path.open("rb") as stream:
                batches = iter_file_records(stream, kind, batch=BATCH)
                total = total + runtime.pipeline.ingest_stream(source, batches, pool=pool)
        elapsed = time.perf_counter() - started
    worker_rss = sum(_peak_rss_of(pid) for pid in pool.pids())
    pool.close()
    return total.received / elapsed, total.as_dict(), worker_rss


def http_path(
    files: dict[str, Path], data_dir: Path
) -> tuple[float, dict[str, int], list[float], float]:
    """Alerts per second through ``POST /api/ingest``, latencies, peak RSS of server + workers."""
    env = {**os.environ, "QUELL_DATA_DIR": str(data_dir), "QUELL_LOG_LEVEL": "warning"}
    quell = [sys.executable, "-m", "quell"]
    token = subprocess.run(
        [*quell, "token", "create", "--name", "bench", "--role", "admin"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    for fmt in FORMATS:
        subprocess.run(
            [*quell, "source", "add", _source_name(fmt), "--kind", "http", "--format", fmt],
            env=env, capture_output=True, check=True,
        )  # fmt: skip
    server = subprocess.Popen(
        [*quell, "serve", "--port", "0"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None
    url = ""
    for line in server.stderr:
        if "serving on" in line:
            url = line.split("serving on", 1)[1].strip()
            break
    if not url:
        raise RuntimeError("quell serve did not start")
    threading.Thread(target=server.stderr.read, daemon=True).start()  # keep the pipe drained
    batches: list[tuple[str, bytes, int]] = []
    for fmt, path in files.items():
        lines = path.read_bytes().splitlines()
        for start in range(0, len(lines), HTTP_BATCH):
            chunk = lines[start : start + HTTP_BATCH]
            batches.append((_source_name(fmt), b"\n".join(chunk), len(chunk)))
    latencies: list[float] = []
    totals: dict[str, int] = {}
    lock = threading.Lock()

    def send(index: int) -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as client:
            for source, body, _ in batches[index::HTTP_CLIENTS]:
                for _attempt in range(100):  # bounded: retry only on 503 overload
                    begun = time.perf_counter()
                    response = client.post(f"/api/ingest/{source}", content=body)
                    if response.status_code != 503:
                        break
                    with lock:
                        totals["retried"] = totals.get("retried", 0) + 1
                    time.sleep(float(response.headers.get("retry-after", "1")))
                response.raise_for_status()
                with lock:
                    latencies.append((time.perf_counter() - begun) * 1000)
                    for key, value in response.json().items():
                        if isinstance(value, int):
                            totals[key] = totals.get(key, 0) + value

    started = time.perf_counter()
    with ThreadPoolExecutor(HTTP_CLIENTS) as pool:
        list(pool.map(send, range(HTTP_CLIENTS)))
    elapsed = time.perf_counter() - started
    # The server and its parsing worker(s): every process whose parent is the server.
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    rss = round(_peak_rss_of(server.pid) + sum(_peak_rss_of(int(pid)) for pid in children), 1)
    server.send_signal(signal.SIGINT)
    server.wait(60)
    return totals.get("received", 0) / elapsed, totals, latencies, rss


def _peak_rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def incidents_formed(data_dir: Path) -> int:
    conn = sqlite3.connect(data_dir / "quell.db")
    try:
        return int(
            conn.execute("SELECT count(*) FROM incidents WHERE merged_into IS NULL").fetchone()[0]
        )
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--alerts", type=int, default=200_000, help="alerts in all")
    parser.add_argument("--workdir", type=Path, default=Path(".bench/ingest"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not 1_000 <= args.alerts <= 2_000_000:
        parser.error("--alerts must be between 1,000 and 2,000,000")
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    files = generate(args.alerts, workdir, args.seed)

    floor_rate = floor(files["file"], workdir)
    file_rate, file_counts, worker_rss = file_path(files["file"], workdir / "file-data")
    file_rss = round(peak_rss_mb() + worker_rss, 1)  # the writer and its parsing worker
    http_rate, http_counts, latencies, server_rss = http_path(files["http"], workdir / "http-data")
    incidents = incidents_formed(workdir / "file-data") + incidents_formed(workdir / "http-data")
    received = file_counts["received"] + http_counts.get("received", 0)
    deduplicated = file_counts["deduplicated"] + http_counts.get("deduplicated", 0)
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 2 else latencies[0]
    shutil.rmtree(workdir, ignore_errors=True)

    file_ratio = f"{file_rate / floor_rate:.2f}x"
    http_ratio = f"{http_rate / floor_rate:.2f}x"
    http_received = http_counts.get("received", 0)
    table(
        f"Ingest of {args.alerts:,} alerts (5 formats, 30% repeats), SQLite, this machine",
        ["path", "alerts", "alerts/s", "vs floor", "peak RSS MB"],
        [
            ["floor (decode + insert)", file_counts["received"], floor_rate, "1.00x", "-"],
            ["file (quell ingest)", file_counts["received"], file_rate, file_ratio, file_rss],
            ["http (quell serve)", http_received, http_rate, http_ratio, server_rss],
        ],
    )
    outcome = [
        received,
        file_counts["stored"] + http_counts.get("stored", 0),
        deduplicated,
        file_counts["suppressed"] + http_counts.get("suppressed", 0),
        file_counts["dead_lettered"] + http_counts.get("dead_lettered", 0),
        incidents,
        round(p95, 1),
    ]
    table(
        "What became of them",
        ["received", "stored", "dedup", "suppressed", "dead", "incidents", "p95 assign ms"],
        [outcome],
    )
    print(f"HTTP batches answered 503 and sent again: {http_counts.get('retried', 0)}")
    emit(
        {
            "alerts": received,
            "file_alerts_per_s": round(file_rate),
            "http_alerts_per_s": round(http_rate),
            "http_retried_batches": http_counts.get("retried", 0),
            "floor_records_per_s": round(floor_rate),
            "dedup_ratio": round(deduplicated / received, 3) if received else 0.0,
            "incidents": incidents,
            "p95_assign_ms": round(p95, 1),
            "file_peak_rss_mb": file_rss,
            "server_peak_rss_mb": server_rss,
            "peak_rss_mb": max(file_rss, server_rss),
        }
    )
    return 0
