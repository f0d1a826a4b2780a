"""``python -m bench NAME [OPTIONS]`` runs one benchmark; ``python -m bench --list`` lists them."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "store": "Group commit vs one commit per write, on SQLite (NORMAL, FULL) and PostgreSQL",
    "ingest": "Synthetic alerts through the file and HTTP intake paths, dedup and correlation",
    "engine": "Alert to 5-step playbook: Quell on SQLite and PostgreSQL against Celery and DBOS",
    "waits": "10,000 runs waiting on approval: worker RSS growth, approve-to-finish latency",
    "intel": "1,000,000 STIX indicators imported, then in-process lookups: rate, p99, memory",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "--list"}:
        print("usage: python -m bench NAME [OPTIONS]\n\nbenchmarks:")
        for name, about in BENCHMARKS.items():
            print(f"  {name:<10} {about}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"error: unknown benchmark {name!r}; try: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
