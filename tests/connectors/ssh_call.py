"""Run one connector action over SSH through the SDK harness and print the result as JSON.

``python -m tests.connectors.ssh_call '<json>'`` with ``{"config", "secrets", "action",
"input", "dry_run", "connector"}`` (``connector``: ``ssh``, the default, or ``runner``): the
SSH tests run it inside the client network namespace (:func:`call_in_client`), so the real
connector code talks to a real sshd in the firewall namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import orjson

from quell.connectors.runner import Runner
from quell.connectors.ssh import Ssh
from quell.sdk import ActionError, Connector
from quell.sdk.testing import Harness
from tests.connectors.netlab import Lab
from tests.fixtures.requirements import REPO_ROOT

CONNECTORS: dict[str, type[Connector]] = {"ssh": Ssh, "runner": Runner}


async def main(request: dict[str, Any]) -> dict[str, Any]:
    connector = CONNECTORS[request.get("connector", "ssh")]
    try:
        async with Harness(
            connector, config=request["config"], secrets=request["secrets"]
        ) as harness:
            if request["action"] == "health":
                return {"ok": True, "output": await harness.health()}
            output = await harness.call(
                request["action"], request.get("input", {}), dry_run=request.get("dry_run", False)
            )
    except ActionError as exc:
        return {"ok": False, "error": exc.to_dict()}
    return {"ok": True, "output": output}


def call_in_client(lab: Lab, request: dict[str, Any]) -> dict[str, Any]:
    """Run the connector in the lab's client namespace; its JSON answer."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        ["ip", "netns", "exec", lab.client, sys.executable, "-m", "tests.connectors.ssh_call",
         json.dumps(request)],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    answer = asyncio.run(main(orjson.loads(sys.argv[1])))
    sys.stdout.write(orjson.dumps(answer).decode() + "\n")  # the last line: log lines come first
