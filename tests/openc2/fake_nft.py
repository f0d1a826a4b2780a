"""A stand-in for ``nft`` that keeps Quell's table in a JSON file: enough of nft for the
nftables connector (``-j list table``, ``-f -`` scripts that add and delete rules and sets,
``--version``), so the OpenC2 consumer can be driven end to end without root or a kernel.

Run as ``python fake_nft.py STATE.json <nft arguments>``; every call is recorded in the state
file (``calls``: argv and standard input) for the test to read.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

_RULE = re.compile(
    r"^(?P<verb>add|insert) rule inet (?P<table>\S+) (?P<chain>\S+) (?P<body>.*) "
    r'comment "(?P<comment>[^"]*)"$'
)
_DELETE_RULE = re.compile(r"^delete rule inet \S+ (?P<chain>\S+) handle (?P<handle>\d+)$")
_SET = re.compile(r"^add set inet \S+ (?P<name>\S+) \{.*elements = \{ (?P<elem>\S+) timeout")
_DELETE_SET = re.compile(r"^delete set inet \S+ (?P<name>\S+)$")
_VERDICTS = ("accept", "drop", "reject")
_MISSING = "Error: Could not process rule: No such file or directory\n"


def _load(path: Path) -> dict[str, Any]:
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        return state
    return {"table": False, "next_handle": 2, "rules": [], "sets": {}, "calls": []}


def _listing(state: dict[str, Any], table: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [{"table": {"family": "inet", "name": table, "handle": 1}}]
    for rule in state["rules"]:
        expr: list[dict[str, Any]] = [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": token}}
            for token in rule["body"].split() if token.startswith("@")
        ]  # fmt: skip
        verdict = next((w for w in reversed(rule["body"].split()) if w in _VERDICTS), "drop")
        expr.append({verdict: None})
        entries.append(
            {"rule": {"family": "inet", "table": table, "chain": rule["chain"],
                      "handle": rule["handle"], "comment": rule["comment"], "expr": expr}}
        )  # fmt: skip
    for name, element in state["sets"].items():
        entries.append(
            {"set": {"family": "inet", "table": table, "name": name,
                     "elem": [{"elem": {"val": element, "expires": 3600}}]}}
        )  # fmt: skip
    return {"nftables": entries}


def _apply(state: dict[str, Any], script: str) -> str | None:
    """Run a script as one transaction on ``state``; nft's error text, or None."""
    for line in filter(None, (line.strip() for line in script.splitlines())):
        if line.startswith(("add table", "add chain")):
            state["table"] = True
        elif match := _SET.match(line):
            state["sets"][match["name"]] = match["elem"]
        elif match := _RULE.match(line):
            rule = {
                "handle": state["next_handle"],
                "chain": match["chain"],
                "body": match["body"],
                "comment": match["comment"],
            }
            state["next_handle"] += 1
            if match["verb"] == "insert":
                state["rules"].insert(0, rule)
            else:
                state["rules"].append(rule)
        elif match := _DELETE_RULE.match(line):
            handle = int(match["handle"])
            kept = [rule for rule in state["rules"] if rule["handle"] != handle]
            if len(kept) == len(state["rules"]):
                return _MISSING
            state["rules"] = kept
        elif match := _DELETE_SET.match(line):
            if state["sets"].pop(match["name"], None) is None:
                return _MISSING
        else:
            return f"Error: syntax error, the fake nft does not know: {line}\n"
    return None


def main(argv: list[str]) -> int:
    path, args = Path(argv[0]), argv[1:]
    state = _load(path)
    stdin = sys.stdin.read() if args == ["-f", "-"] else None
    state["calls"].append({"argv": args, "stdin": stdin})
    status = 0
    if args == ["--version"]:
        sys.stdout.write("nftables v1.0.6 (fake)\n")
    elif args[:3] == ["-j", "list", "table"]:
        if not state["table"]:
            sys.stderr.write("Error: No such file or directory\n")
            status = 1
        else:
            sys.stdout.write(json.dumps(_listing(state, args[-1])) + "\n")
    elif stdin is not None:
        changed = json.loads(json.dumps(state))
        error = _apply(changed, stdin)
        if error is None:
            state = changed
        else:
            sys.stderr.write(error)
            status = 1
    else:
        sys.stderr.write(f"Error: the fake nft does not know {args}\n")
        status = 1
    path.write_text(json.dumps(state))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
