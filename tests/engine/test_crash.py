"""The crash test: ``quell worker`` processes killed with SIGKILL lose no run and repeat no write.

1,000 runs of a five-step playbook; step 4 blocks an address on a firewall stand-in
(``bench.fwstub``) that logs every call's idempotency key and deduplicates nothing. Workers are
real ``quell worker`` processes, killed with SIGKILL when the number of finished runs crosses
five random thresholds:

- SQLite: one worker, restarted after each kill;
- PostgreSQL: two workers; the first four kills restart the victim, the fifth does not, and the
  survivor must take over the dead worker's runs once their leases expire.

Each victim is frozen with SIGSTOP at its moment and killed only if it holds runs then (else it
goes on and the test tries again a moment later), so that every kill interrupts work.

Every run must succeed and every key must reach the firewall exactly once. The seed is printed
so that a failure can be replayed (``QUELL_CRASH_SEED``).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from quell.engine.engine import Engine
from quell.ids import new_id
from quell.playbooks.compiler import parse_playbook
from quell.runtime import Runtime
from quell.settings import load_settings
from quell.store.schema import run_steps, runs

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
RUNS = 1_000
KILLS = 5
LEASE_SECONDS = 3
PLAYBOOK = """
id: crash-test
name: Triage and block, under fire
inputs:
  ip: {type: string, required: true}
  firewall: {type: string, required: true}
  before: {type: number, required: true}
  after: {type: number, required: true}
vars: {src: "", verdict: ""}
steps:
  - id: parse
    set: {src: "{{ ip }}"}
  - id: look
    action: core.echo
    with: {value: "{{ src }}"}
  - id: judge
    set: {verdict: "{{ 'internal' if steps.look.output.value is private_ip else 'external' }}"}
  - id: block
    action: crashfw.block
    with: {url: "{{ firewall }}", ip: "{{ src }}", before: "{{ before }}", after: "{{ after }}"}
  - id: record
    action: core.log
    with: {message: "blocked {{ src }} ({{ verdict }})"}
"""


@dataclass
class Firewall:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def keys(self) -> Counter[str]:
        return Counter(self.log.read_text(encoding="utf-8").split())


@pytest.fixture
def firewall(tmp_path: Path) -> Iterator[Firewall]:
    """``bench.fwstub`` on a free loopback port, logging keys to a file."""
    log = tmp_path / "firewall.log"
    log.touch()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.fwstub", "0", str(log)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline().decode()  # "fwstub listening on 127.0.0.1:PORT"
        assert "listening" in line, line
        yield Firewall(f"http://{line.split()[-1]}", log, process)
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()


class Workers:
    """``quell worker`` processes on one database."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.every: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"worker-{len(self.every) + 1}.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "quell", "worker"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.every.append(worker)
        return worker

    def stop(self) -> None:
        """Stop every worker still running (SIGTERM, then SIGKILL), whatever happened."""
        running = [worker for worker in self.every if worker.poll() is None]
        for worker in running:
            worker.send_signal(signal.SIGTERM)
        for worker in running:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)


def _finished(runtime: Runtime) -> int:
    with runtime.db.read() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(runs).where(runs.c.status == "succeeded")
            ).scalar_one()
        )


def _freeze_a_busy_one(
    runtime: Runtime, alive: list[subprocess.Popen[bytes]], rng: random.Random
) -> tuple[subprocess.Popen[bytes] | None, set[str]]:
    """Freeze the workers in a random order; the first that holds runs stays frozen."""
    for worker in rng.sample(alive, len(alive)):
        worker.send_signal(signal.SIGSTOP)
        held = _held_by(runtime, worker.pid)
        if held:
            return worker, held
        worker.send_signal(signal.SIGCONT)
    return None, set()


def _census(runtime: Runtime) -> list[tuple[str | None, str, int]]:
    with runtime.db.read() as conn:
        query = select(runs.c.owner, runs.c.status, func.count()).group_by(
            runs.c.owner, runs.c.status
        )
        return [(owner, status, count) for owner, status, count in conn.execute(query)]


def _held_by(runtime: Runtime, pid: int) -> set[str]:
    """Runs the worker with this pid holds (its owner name carries the pid)."""
    with runtime.db.read() as conn:
        return set(
            conn.execute(
                select(runs.c.id).where(runs.c.status == "running", runs.c.owner.like(f"%:{pid}:%"))
            ).scalars()
        )


def test_killed_workers_lose_no_run_and_repeat_no_containment(
    database_url: str,
    backend: str,
    firewall: Firewall,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("QUELL_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
    replay = f"(replay with QUELL_CRASH_SEED={seed}; worker logs in {tmp_path})"
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    settings = load_settings(
        data_dir=data_dir, database_url=database_url, plugins=["tests.engine.crash_peer"]
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QUELL_")},
        "QUELL_DATA_DIR": str(data_dir),
        "QUELL_DATABASE_URL": database_url,
        "QUELL_PLUGINS": "tests.engine.crash_peer",
        "QUELL_OUTBOUND_ALLOW": "127.0.0.1",
        "QUELL_ENGINE_LEASE_SECONDS": str(LEASE_SECONDS),
        "QUELL_ENGINE_CONCURRENCY": "16",
        "QUELL_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    with Runtime.open(settings) as runtime:
        engine = Engine.for_runtime(runtime)
        playbook = parse_playbook(PLAYBOOK, "crash.yaml", actions=engine.actions.registry)
        version = runtime.playbooks.register(playbook, published=True)
        rows = [
            engine.run_row(
                new_id("run"),
                version.id,
                playbook.id,
                {
                    "ip": f"198.51.100.{i % 250 + 1}",
                    "firewall": firewall.url,
                    # Runs of unlike speeds, so that a kill finds them in every phase.
                    "before": rng.uniform(0.0, 0.04),
                    "after": rng.uniform(0.0, 0.04),
                },
                trigger="crash-test",
            )
            for i in range(RUNS)
        ]
        with runtime.db.write() as conn:
            engine.journal.insert_run.run(conn, rows)

        pool = Workers(env, tmp_path)
        alive = [pool.start() for _ in range(2 if backend == "postgresql" else 1)]
        # Kills within the first four fifths, so that the last one still finds work to cut.
        thresholds = sorted(rng.sample(range(RUNS // 20, RUNS * 4 // 5), KILLS))
        interrupted: list[int] = []  # runs each victim held when it died
        orphans: set[str] = set()  # on PostgreSQL: what the last, unrestarted victim held
        try:
            for number, threshold in enumerate(thresholds, start=1):
                # Past the threshold, a worker frozen (SIGSTOP) while it holds runs, then
                # killed: a kill that interrupts nothing proves nothing (a restarted worker holds
                # none until the dead one's leases expire, and of two workers one may be idle).
                victim, held = None, set()
                for _ in range(6_000):  # 20 ms polls, two minutes at most per kill
                    if _finished(runtime) >= threshold:
                        time.sleep(rng.uniform(0.0, 0.05))  # not just as a batch ends
                        victim, held = _freeze_a_busy_one(runtime, alive, rng)
                        if victim is not None:
                            break
                    time.sleep(0.02)
                if victim is None:
                    pytest.fail(
                        f"kill {number}: below {threshold} finished runs, or idle; by owner and "
                        f"status: {_census(runtime)} {replay}"
                    )
                alive.remove(victim)
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                interrupted.append(len(held))
                last_of_two = backend == "postgresql" and number == KILLS
                if last_of_two:
                    orphans = held  # no restart: the survivor must take these over
                else:
                    alive.append(pool.start())
            # The last victim's runs wait for their leases to run out; then the survivor (or
            # the restarted worker) takes them over.
            for _ in range(9_000):  # three minutes at most
                if _finished(runtime) == RUNS:
                    break
                if any(worker.poll() is not None for worker in alive):
                    pytest.fail(f"a worker that was not killed exited {replay}")
                time.sleep(0.02)
        finally:
            pool.stop()

        with runtime.db.read() as conn:
            by_status = dict(
                conn.execute(select(runs.c.status, func.count()).group_by(runs.c.status)).all()
            )
            blocks = conn.execute(
                select(run_steps.c.run_id, run_steps.c.status, run_steps.c.output).where(
                    run_steps.c.key == "block"
                )
            ).all()

    reconciled = sum(1 for _, status, output in blocks if (output or {}).get("reconciled"))
    log.info(
        "crash test: seed %s, runs each kill interrupted %s, block attempts %s, settled by "
        "reconcile %s, orphans taken over %s",
        seed, interrupted, len(blocks), reconciled, len(orphans),
    )  # fmt: skip
    assert by_status == {"succeeded": RUNS}, f"{by_status} {replay}"
    assert all(interrupted), f"a kill interrupted no run: {interrupted} {replay}"
    keys = firewall.keys()
    repeated = {key: n for key, n in keys.items() if n > 1}
    assert not repeated, f"containment repeated at the peer: {repeated} {replay}"
    assert len(keys) == RUNS, replay
    succeeded = Counter(run_id for run_id, status, _ in blocks if status == "succeeded")
    assert len(succeeded) == RUNS, replay
    assert set(succeeded.values()) == {1}, replay
    # Both recoveries happened: blocks the firewall had seen were settled by reconcile, not
    # sent again; blocks it had not seen were sent again (under a new attempt's key).
    assert reconciled > 0, f"no kill caught a block after the firewall saw it {replay}"
    assert len(blocks) > RUNS, f"no kill caught a block before the firewall saw it {replay}"
    if backend == "postgresql":
        # The dead worker was never restarted: the survivor finished what it held.
        assert orphans, "the last kill should leave runs for the survivor"
