"""Starting runs by hand (the API's manual trigger).

With an embedded engine that serves, a run is created already held by it and starts at once,
with no claim query. Otherwise (cluster mode, or an engine at its concurrency limit) the run is
committed as ``ready`` with ``NOTIFY`` on PostgreSQL, so an idle worker picks it up at once and
a busy one at its next poll. Either way the caller hears of the run only once it is durable.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from quell.engine.notify import notify_ready
from quell.errors import InvalidInput
from quell.ids import new_id
from quell.playbooks.validate import TRIGGER_NAMES

if TYPE_CHECKING:
    from quell.connectors.registry import Registry
    from quell.engine.embedded import EmbeddedEngine
    from quell.engine.engine import Engine
    from quell.engine.store import PlaybookVersion
    from quell.playbooks.ir import Playbook
    from quell.runtime import Runtime


# A declared type's JSON shape: the DSL's types and CACAO 2.0's variable types. Other types
# (and ``any``) take any value.
_TEXT_TYPES = (
    "string", "uri", "uuid", "ipv4-addr", "ipv6-addr", "mac-addr", "hash", "md5-hash",
    "sha1-hash", "sha224-hash", "sha256-hash", "sha384-hash", "sha512-hash", "hexstring",
)  # fmt: skip
_SHAPES: dict[str, tuple[str, tuple[type, ...]]] = {
    **dict.fromkeys(_TEXT_TYPES, ("a string", (str,))),
    "integer": ("an integer", (int,)),
    "long": ("an integer", (int,)),
    "number": ("a number", (int, float)),
    "boolean": ("true or false", (bool,)),
    "list": ("a list", (list,)),
    "object": ("an object", (dict,)),
    "dictionary": ("an object", (dict,)),
}


def check_inputs(playbook: Playbook, inputs: dict[str, Any], *, field: str = "inputs") -> None:
    """InvalidInput naming the first input that is missing, not declared, or not of its
    declared type (``field`` prefixes the input's name in the error: ``inputs.host``)."""
    declared = {name: v for name, v in playbook.variables.items() if v.external}
    # What a trigger of the playbook passes (alert, incident, ...): a run by hand may pass it.
    payloads: set[str] = set()
    for trigger in playbook.triggers:
        payloads |= TRIGGER_NAMES.get(trigger.on, frozenset())
    for name in inputs:
        if name not in declared and name not in payloads:
            known = ", ".join(sorted({*declared, *payloads})) or "none"
            raise InvalidInput(
                f"the playbook has no input {name!r} (its inputs: {known})",
                field=f"{field}.{name}",
            )
    for name, variable in declared.items():
        value = inputs.get(name)
        if value is None:
            if variable.required:
                raise InvalidInput(
                    f"the playbook needs the input {name!r}", field=f"{field}.{name}"
                )
            continue
        problem = input_type_problem(playbook, name, value)
        if problem is not None:
            raise InvalidInput(problem, field=f"{field}.{name}")


def input_type_problem(playbook: Playbook, name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the declared input ``name`` (not of its type), or None."""
    variable = playbook.variables.get(name)
    if variable is None or value is None:
        return None
    shape = _SHAPES.get(variable.type)
    if shape is None or (playbook.source_format == "cacao" and _cacao_text(variable, value)):
        return None
    what, types = shape
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        return f"input {name!r} must be {what} (declared {variable.type}), not {_json_kind(value)}"
    return None


def _cacao_text(variable: Any, value: Any) -> bool:
    """CACAO 2.0 writes numbers and booleans as JSON strings ("3", "true"): a string that
    reads as its declared type is that type in a CACAO playbook."""
    if not isinstance(value, str):
        return False
    if variable.type in ("integer", "long"):
        return re.fullmatch(r"[+-]?\d+", value.strip()) is not None
    if variable.type == "number":
        return re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip()) is not None
    return variable.type == "boolean" and value.strip().lower() in ("true", "false")


def _json_kind(value: Any) -> str:
    kinds = ((bool, "true or false"), (int, "an integer"), (float, "a number"),
             (str, "a string"), (list, "a list"), (dict, "an object"))  # fmt: skip
    return next((what for kind, what in kinds if isinstance(value, kind)), type(value).__name__)


class Launcher:
    """Creates manual runs, in the embedded engine when there is one serving."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        embedded: EmbeddedEngine | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.runtime = runtime
        self.embedded = embedded
        self.registry = registry
        self._rows: Engine | None = None

    async def start(
        self,
        version: PlaybookVersion,
        inputs: dict[str, Any],
        *,
        dry_run: bool = False,
        created_by: str | None = None,
    ) -> str:
        """Create a run of ``version``; its id, once it is committed."""
        playbook = await asyncio.to_thread(self.runtime.playbooks.ir, version.id)
        check_inputs(playbook, inputs)
        run_id = new_id("run")
        embedded = self.embedded
        if embedded is not None and embedded.serving:
            engine = embedded.engine
            if len(engine.tasks) < engine.concurrency:
                return await engine.start(
                    version.id, inputs, dry_run=dry_run, created_by=created_by, run_id=run_id
                )
        await asyncio.to_thread(
            self._enqueue, version, inputs, run_id, dry_run=dry_run, created_by=created_by
        )
        if embedded is not None:
            embedded.engine.wake()
        return run_id

    def _enqueue(
        self,
        version: PlaybookVersion,
        inputs: dict[str, Any],
        run_id: str,
        *,
        dry_run: bool,
        created_by: str | None,
    ) -> None:
        engine = self._row_maker()
        row = engine.run_row(
            run_id, version.id, version.playbook_id, inputs, dry_run=dry_run, created_by=created_by
        )
        with self.runtime.db.write() as conn:
            engine.journal.insert_run.run(conn, [row])
            notify_ready(conn)

    def _row_maker(self) -> Engine:
        """An engine that never serves, for its run rows (the embedded one when there is one)."""
        if self.embedded is not None:
            return self.embedded.engine
        if self._rows is None:
            from quell.engine.engine import Engine

            self._rows = Engine.for_runtime(self.runtime, registry=self.registry)
        return self._rows


__all__ = ["Launcher", "check_inputs", "input_type_problem"]
