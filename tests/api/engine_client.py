"""Driving playbooks and runs through the API in tests."""

from __future__ import annotations

import time
from typing import Any

import httpx

ENDED = ("succeeded", "failed", "canceled")
SETTLED = (*ENDED, "waiting", "paused")


def add(client: httpx.Client, text: str, **params: Any) -> dict[str, Any]:
    """POST a playbook's YAML; the stored version."""
    response = client.post(
        "/api/playbooks",
        content=text.encode(),
        params=params,
        headers={"content-type": "application/yaml"},
    )
    assert response.status_code == 201, response.text
    version: dict[str, Any] = response.json()
    return version


def start(client: httpx.Client, playbook: str, **body: Any) -> str:
    """Start a run by hand; its id."""
    response = client.post(f"/api/playbooks/{playbook}/runs", json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    assert response.headers["location"] == f"/api/runs/{run_id}"
    return run_id


def settle(client: httpx.Client, run_id: str, until: tuple[str, ...] = SETTLED) -> dict[str, Any]:
    """The run (with steps) once its status is one of ``until``; fails after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        response = client.get(f"/api/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if run["status"] in until:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {run['status']}")
        time.sleep(0.02)


def step(run: dict[str, Any], key: str) -> dict[str, Any]:
    """The latest attempt of a step."""
    attempts = [s for s in run["steps"] if s["key"] == key]
    assert attempts, f"no step {key!r} in {[s['key'] for s in run['steps']]}"
    return max(attempts, key=lambda s: s["attempt"])
