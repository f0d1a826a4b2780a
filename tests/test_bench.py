"""The benchmarks stay runnable: tiny sizes, and the last line is the JSON of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert "store" in result.stdout


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
