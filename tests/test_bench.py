"""The benchmarks stay runnable: tiny sizes, and the last line is the JSON of figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.engine import generate

REPO_ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_list_names_every_benchmark(tmp_path: Path) -> None:
    result = _bench("--list", cwd=tmp_path)
    assert result.returncode == 0
    for name in ("store", "ingest", "engine", "waits"):
        assert name in result.stdout


def test_store_benchmark_prints_a_table_then_one_json_line(tmp_path: Path) -> None:
    result = _bench("store", "--writes", "320", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    for backend in ("sqlite_normal", "sqlite_full"):
        assert figures[f"{backend}_group_per_s"] > 0
        assert figures[f"{backend}_floor_per_s"] > 0
    assert figures["writes"] == 320
    assert any("group/floor" in line for line in lines[:-1])


def test_unknown_benchmark_is_refused(tmp_path: Path) -> None:
    result = _bench("nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown benchmark 'nope'" in result.stderr


def test_ingest_benchmark_prints_a_table_then_its_figures(tmp_path: Path) -> None:
    result = _bench("ingest", "--alerts", "1000", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "file_alerts_per_s",
        "http_alerts_per_s",
        "dedup_ratio",
        "incidents",
        "p95_assign_ms",
        "peak_rss_mb",
    ):
        assert key in figures
    assert figures["alerts"] == 1000
    assert 0.15 < figures["dedup_ratio"] < 0.4
    assert figures["incidents"] > 0


def test_intel_benchmark_imports_then_looks_up(tmp_path: Path) -> None:
    result = _bench(
        "intel", "--indicators", "4000", "--bundle-size", "1000", "--lookups", "3000",
        "--workdir", str(tmp_path / "w"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("indicators", "import_per_s", "lookups_per_s", "p99_lookup_ms", "rss_mb"):
        assert key in figures
    # Every generated indicator is a kind the store takes, and a third of the lookups (plus
    # every e-mail address, all of them listed) are built to match.
    assert figures["indicators"] == 4000
    assert figures["added"] >= 3990
    assert 1000 <= figures["matched"] <= 1500


ENGINE_KEYS = (
    "quell_sqlite_runs_per_s",
    "quell_sqlite_full_runs_per_s",
    "quell_postgres_runs_per_s",
    "celery_runs_per_s",
    "dbos_runs_per_s",
    "p95_ms",
    "quell_vs_celery",
    "legs",
)


def _figures(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert any("runs/s" in line for line in lines[:-1])  # the table came first
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def _sane_leg(leg: dict[str, Any], runs: int) -> None:
    assert leg["runs"] == runs
    assert leg["failed_runs"] == 0
    assert leg["firewall_calls_ok"], leg["reps"]
    assert leg["runs_per_s"] > 0
    assert leg["steps_per_s"] >= 4 * leg["runs_per_s"] * 0.99  # 4 or 5 steps a run
    assert 0 < leg["p50_ms"] <= leg["p95_ms"]
    assert leg["peak_rss_mb"] > 0


def test_engine_data_has_the_peer_workload_shape(tmp_path: Path) -> None:
    counts = generate(tmp_path, 400, iocs=5000)
    iocs = set((tmp_path / "ioc.txt").read_text().split())
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert len(iocs) == counts["iocs"] == 5000
    assert len(alerts) == 400
    assert sum(alert["network"]["src_ip"] in iocs for alert in alerts) == counts["malicious"]
    assert 140 < counts["malicious"] < 260  # about half
    assert len({alert["alert_id"] for alert in alerts}) == 400
    assert 900 < len(json.dumps(alerts[0])) < 1200  # about 1 KB each


def test_engine_benchmark_on_sqlite_prints_a_table_then_its_figures(tmp_path: Path) -> None:
    result = _bench(
        "engine", "--quick", "--skip-peers", "--legs",
        "quell_sqlite,quell_sqlite_full,floor,floor_full",
        "--workdir", str(tmp_path / "w"),
        cwd=tmp_path,
    )  # fmt: skip
    figures = _figures(result)
    for key in ENGINE_KEYS:
        assert key in figures
    assert figures["alerts"] == 200
    assert figures["quell_sqlite_runs_per_s"] > 0
    assert figures["quell_sqlite_full_runs_per_s"] > 0
    assert figures["p95_ms"] > 0
    for leg in ("quell_sqlite", "quell_sqlite_full", "floor", "floor_full"):
        _sane_leg(figures["legs"][leg], 200)
    # The floor legs scale the absolute targets: 2,000 of 2,578 and 1,500 of 1,887.
    scaled = figures["targets_at_this_floor"]
    assert scaled["quell_sqlite"] == round(2000 * figures["floor_runs_per_s"] / 2578)
    assert scaled["quell_sqlite_full"] == round(1500 * figures["floor_full_runs_per_s"] / 1887)
    assert figures["quell_vs_floor"] == round(
        figures["quell_sqlite_runs_per_s"] / figures["floor_runs_per_s"], 2
    )
    for skipped in ("quell_postgres", "celery", "dbos"):
        assert figures[f"{skipped}_runs_per_s"] is None
        assert skipped in figures["notes"]
    assert figures["quell_vs_celery"] is None


@pytest.mark.requires("postgres")
def test_engine_benchmark_on_postgres_with_two_workers(tmp_path: Path) -> None:
    result = _bench(
        "engine", "--quick", "--legs", "quell_postgres",
        "--postgres-url", os.environ["QUELL_TEST_POSTGRES_URL"],
        "--workdir", str(tmp_path / "w"),
        cwd=tmp_path,
    )  # fmt: skip
    figures = _figures(result)
    assert figures["quell_postgres_runs_per_s"] > 0, figures["notes"]
    _sane_leg(figures["legs"]["quell_postgres"], 200)
    assert figures["legs"]["quell_postgres"]["peak_rss_mb"] > 0  # the two workers'


@pytest.mark.requires("bench-peers", "redis")
@pytest.mark.parametrize("peer", ["celery", "dbos"])
def test_engine_benchmark_peers_stay_runnable(tmp_path: Path, peer: str) -> None:
    result = _bench(
        "engine", "--quick", "--legs", peer,
        "--redis-url", "redis://127.0.0.1:6379/14",  # not the benchmark's default database
        "--workdir", str(tmp_path / "w"),
        cwd=tmp_path,
    )  # fmt: skip
    figures = _figures(result)
    assert figures[f"{peer}_runs_per_s"] > 0, figures["notes"]
    _sane_leg(figures["legs"][peer], 200)


def test_waits_benchmark_prints_a_table_then_its_figures(tmp_path: Path) -> None:
    result = _bench("waits", "--quick", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert any("RSS growth" in line for line in lines[:-1])
    figures = json.loads(lines[-1])
    assert figures["waiting_runs"] == 500
    assert isinstance(figures["rss_growth_mb"], float)
    assert figures["rss_baseline_mb"] > 0
    assert figures["approved"] == 50
    assert 0 < figures["resume_p50_ms"] <= figures["resume_p95_ms"]
    assert figures["approved_polled"] == 5
    assert figures["succeeded_runs"] == 20 + 50 + 5  # warm-up, approved, approved elsewhere
    assert figures["engine_holds_while_waiting"]["active_executions"] == 0
