"""Run one ssh connector action through the SDK harness and print the result as JSON.

``python -m tests.connectors.ssh_call '<json>'`` with ``{"config", "secrets", "action",
"input", "dry_run"}``: the SSH tests run it inside the client network namespace, so the real
connector code talks to a real sshd in the firewall namespace.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from quell.connectors.ssh import Ssh
from quell.sdk import ActionError
from quell.sdk.testing import Harness


async def main(request: dict[str, Any]) -> dict[str, Any]:
    try:
        async with Harness(Ssh, config=request["config"], secrets=request["secrets"]) as harness:
            if request["action"] == "health":
                return {"ok": True, "output": await harness.health()}
            output = await harness.call(
                request["action"], request.get("input", {}), dry_run=request.get("dry_run", False)
            )
    except ActionError as exc:
        return {"ok": False, "error": exc.to_dict()}
    return {"ok": True, "output": output}


if __name__ == "__main__":
    answer = asyncio.run(main(orjson.loads(sys.argv[1])))
    sys.stdout.write(orjson.dumps(answer).decode() + "\n")  # the last line: log lines come first
