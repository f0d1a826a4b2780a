"""CACAO 2.0 playbooks in the library: import (with bindings and sealed credentials), export
(optionally signed), and the credentials a run's steps are called with.

The pure translation is :mod:`quell.playbooks.cacao`; this module adds what needs the database:
which connector instances exist (a binding to a missing or wrong instance is refused at import,
not discovered mid-run), the sealed credentials an import moved out of the playbook text, and
the library's versions (a CACAO playbook is stored, reviewed and published like any other).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, select

from quell.clock import Clock
from quell.errors import Conflict, InvalidInput, NotFound
from quell.governance.secrets import SecretBox
from quell.ids import new_id
from quell.playbooks.ir import Playbook, Trigger
from quell.sdk.http import OutboundPolicy
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import playbook_credentials, playbook_versions

if TYPE_CHECKING:  # the CACAO modules load when a CACAO playbook is handled, not with the engine
    from quell.playbooks.cacao.importer import Imported, ImportReport
    from quell.playbooks.cacao.schema import Mode

PURPOSE = "playbook-credential"


@dataclass(frozen=True)
class CredentialRecord:
    """A stored credential's owner and where an HTTP call may take it (no value)."""

    name: str
    playbook_id: str
    kind: str
    hosts: tuple[str, ...]


class CredentialStore:
    """Credentials imported playbooks carried, sealed; opened only for the call that uses them."""

    def __init__(self, db: Database, box: SecretBox, clock: Clock) -> None:
        self.db = db
        self.box = box
        self.clock = clock

    def put(
        self,
        name: str,
        playbook_id: str,
        kind: str,
        values: Mapping[str, str],
        by: str,
        hosts: Sequence[str] = (),
    ) -> None:
        """Seal ``values`` under ``name`` (replacing what was there)."""
        plain = SecretValue(orjson.dumps(dict(values)).decode())
        sealed = self.box.seal(plain, purpose=f"{PURPOSE}:{name}")
        row = {
            "id": name,
            "playbook_id": playbook_id,
            "kind": kind,
            "secret": sealed,
            "hosts": orjson.dumps(sorted(set(hosts))).decode(),
            "updated_at": self.clock.now(),
            "updated_by": by,
        }
        with self.db.write() as conn:
            conn.execute(delete(playbook_credentials).where(playbook_credentials.c.id == name))
            conn.execute(playbook_credentials.insert().values(**row))

    def place(
        self,
        prefix: str,
        playbook_id: str,
        kind: str,
        values: Mapping[str, str],
        by: str,
        hosts: Sequence[str] = (),
    ) -> str:
        """The name ``values`` are sealed under: that of a stored credential of ``prefix``
        with the same values, else a new one. A version's credential never changes: an import
        with other values makes another credential (and so another version)."""
        with self.db.read() as conn:
            names = conn.execute(
                select(playbook_credentials.c.id).where(
                    playbook_credentials.c.playbook_id == playbook_id
                )
            ).scalars()
            candidates = sorted(str(n) for n in names if str(n).startswith(prefix + "/"))
        wanted = {key: str(value) for key, value in values.items()}
        for name in candidates:
            stored = {key: value.reveal() for key, value in self.get(name).items()}
            if stored == wanted and self.record(name).hosts == tuple(sorted(set(hosts))):
                return name
        name = f"{prefix}/{new_id('cred')}"
        self.put(name, playbook_id, kind, values, by, hosts)
        return name

    def record(self, name: str) -> CredentialRecord:
        """Whose credential ``name`` is and where it may go; NotFound when there is none."""
        with self.db.read() as conn:
            row = conn.execute(
                select(
                    playbook_credentials.c.playbook_id,
                    playbook_credentials.c.kind,
                    playbook_credentials.c.hosts,
                ).where(playbook_credentials.c.id == name)
            ).first()
        if row is None:
            raise NotFound(f"no stored credential {name!r}: import the playbook again")
        hosts = tuple(str(host) for host in orjson.loads(row.hosts))
        return CredentialRecord(name, row.playbook_id, row.kind, hosts)

    def get(self, name: str) -> dict[str, SecretValue]:
        """The values sealed under ``name``; NotFound when there are none."""
        with self.db.read() as conn:
            sealed = conn.execute(
                select(playbook_credentials.c.secret).where(playbook_credentials.c.id == name)
            ).scalar()
        if sealed is None:
            raise NotFound(f"no stored credential {name!r}: import the playbook again")
        plain = self.box.open(bytes(sealed), purpose=f"{PURPOSE}:{name}")
        values = orjson.loads(plain.reveal())
        return {str(k): SecretValue(str(v)) for k, v in values.items()}

    def names(self, playbook_id: str) -> list[str]:
        """The credentials stored for a playbook (names only)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(playbook_credentials.c.id).where(
                    playbook_credentials.c.playbook_id == playbook_id
                )
            ).scalars()
            return sorted(rows)


def version_for(db: Database, playbook: Playbook) -> Playbook:
    """``playbook`` numbered: the number of a stored version with the same content, else the
    next free one (CACAO versions are timestamps; Quell's are numbers)."""
    with db.read() as conn:
        rows = conn.execute(
            select(playbook_versions.c.version, playbook_versions.c.digest).where(
                playbook_versions.c.playbook_id == playbook.id
            )
        ).all()
    highest = 0
    for number, digest in rows:
        candidate = replace(playbook, version=number)
        if candidate.digest() == digest:
            return candidate
        highest = max(highest, number)
    return replace(playbook, version=highest + 1)


class CacaoService:
    """Import CACAO text into the library, and export stored playbooks as CACAO."""

    def __init__(
        self,
        library: Any,
        credentials: CredentialStore,
        instances: Any | None = None,
        *,
        max_iterations: int = 1000,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.library = library
        self.credentials = credentials
        self.instances = instances
        self.max_iterations = max_iterations
        self.outbound = outbound or OutboundPolicy()

    def _connector_of(self, name: str) -> str | None:
        if self.instances is None:
            return None
        try:
            return str(self.instances.get(name).connector)
        except NotFound:
            return None

    def translate(
        self,
        text: str | bytes,
        file: str | None = None,
        *,
        mode: Mode = "lenient",
        bindings: Mapping[str, str] | None = None,
    ) -> Imported:
        """Validate and translate (nothing stored); CacaoInvalid lists every error."""
        from quell.playbooks.cacao.importer import import_cacao
        from quell.playbooks.cacao.schema import load_cacao

        doc = load_cacao(text, file)
        imported = import_cacao(
            doc,
            mode=mode,
            bindings=bindings,
            instance_connector=self._connector_of if self.instances is not None else None,
            max_iterations=self.max_iterations,
            file=file,
        )
        imported.report.needs[:] = outbound_needs(imported.report.needs, self.outbound)
        return imported

    def import_text(
        self,
        text: str | bytes,
        file: str | None = None,
        *,
        by: str,
        mode: Mode = "lenient",
        bindings: Mapping[str, str] | None = None,
        activate: bool = False,
        triggers: Sequence[Trigger] = (),
    ) -> tuple[Any, ImportReport]:
        """Import into the library as a draft (or published, where review is optional): the
        credentials sealed, the text stored without them. Returns the version and the report.
        ``triggers`` start it by themselves once published (CACAO has no triggers; an export
        keeps them in Quell's extension)."""
        self.library.refuse_activate(activate)  # before anything is sealed or stored
        imported = self.translate(text, file, mode=mode, bindings=bindings)
        if triggers:
            imported.playbook = replace(imported.playbook, triggers=tuple(triggers))
        if activate and imported.report.unsupported:
            raise Conflict(
                "this playbook needs what Quell does not support "
                f"({imported.report.unsupported[0]['construct']}): it imports as a draft only",
                field="activate",
            )
        playbook = imported.playbook
        auths = imported.source.get("authentication_info_definitions") or {}
        stored: dict[str, str] = {}
        for prefix, values in imported.credentials.items():
            auth_id = prefix.rsplit("/", 1)[-1]
            kind = str((auths.get(auth_id) or {}).get("type", "unknown"))
            hosts = imported.credential_hosts.get(prefix, [])
            stored[prefix] = name = self.credentials.place(
                prefix, playbook.id, kind, values, by, hosts
            )
            auths[auth_id]["kms_key_identifier"] = f"quell:{name}"
        if stored:
            playbook = replace(
                playbook,
                steps={
                    key: replace(step, credential=stored.get(step.credential, step.credential))
                    if step.credential
                    else step
                    for key, step in playbook.steps.items()
                },
                extensions={**playbook.extensions, "cacao": imported.source_meta()},
            )
        playbook = version_for(self.library.db, playbook)
        source = orjson.dumps(imported.source, option=orjson.OPT_INDENT_2).decode()
        version = self.library.add_playbook(
            playbook, source, created_by=by, activate=activate, event="imported"
        )
        return version, imported.report

    def export(
        self, playbook_id: str, version: int | None = None, *, signing_key: Any | None = None
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """A stored playbook (the active one, else the newest) as CACAO, signed with
        ``signing_key`` (a :class:`~quell.playbooks.cacao.signatures.SigningKey`) if given."""
        from quell.playbooks.cacao.exporter import export_cacao

        chosen = self.library.store.resolve(playbook_id, version)
        playbook = self.library.store.ir(chosen.id)  # parsed once, cached: versions never change
        # A YAML playbook's CACAO timestamps are its version's: one version, one export.
        doc, notes = export_cacao(playbook, now=chosen.created_at)
        if signing_key is not None:
            from quell.playbooks.cacao.signatures import sign_playbook

            doc = sign_playbook(doc, signing_key)
        return doc, notes


def parse_trigger(on: str | None, condition: str | None, cron: str | None) -> list[Trigger]:
    """A trigger from ``--on``/``--if``/``--cron`` (checked as the YAML language checks one);
    none when ``on`` is not given."""
    if on is None:
        if condition is not None or cron is not None:
            raise InvalidInput("--if and --cron go with --on EVENT", field="on")
        return []
    from pydantic import ValidationError

    from quell.playbooks.dsl import TriggerModel

    raw: dict[str, Any] = {"on": on}
    if condition is not None:
        raw["if"] = condition
    if cron is not None:
        raw["cron"] = cron
    try:
        model = TriggerModel.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidInput(f"trigger: {error['msg']}", field="on") from None
    if model.if_ is not None:
        from quell.playbooks.expressions import compile_expression

        compile_expression(model.if_, "trigger.if")  # ExpressionError names what is wrong
    if (model.on == "schedule") != (model.cron is not None):
        raise InvalidInput("a schedule trigger needs --cron, and only a schedule has one")
    if model.cron is not None:
        from datetime import UTC, datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(model.cron, datetime.now(UTC))
        except CronSimError as exc:
            raise InvalidInput(f"--cron {model.cron!r}: {exc}", field="cron") from None
    return [Trigger(on=model.on, condition=model.if_, cron=model.cron)]


def check_bindings(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``ID=INSTANCE`` pairs (CLI ``--bind``) as a mapping; InvalidInput naming a bad one."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidInput(
                f"--bind {pair!r}: expected AGENT_OR_TARGET_ID=INSTANCE", field="bind"
            )
        found[key.strip()] = value.strip()
    return found


def outbound_needs(needs: list[dict[str, Any]], policy: OutboundPolicy) -> list[dict[str, Any]]:
    """An import report's needs with its hosts read against ``policy``: nothing is needed for
    an address or name the policy already lets through; a name is reached when it resolves to
    a public address, and a private one needs outbound_allow."""
    kept: list[dict[str, Any]] = []
    for need in needs:
        if need.get("kind") != "host":
            kept.append(need)
            continue
        host = str(need.get("ref") or "")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if host.lower().rstrip(".") not in policy.hosts:
                message = (
                    f"outbound HTTP to {host}: reached if the name resolves to a public "
                    "address; a private one must be allowed in outbound_allow"
                )
                kept.append({**need, "message": message})
            continue
        if not policy.allows(host, address):
            message = f"outbound HTTP to {host} (allow it in outbound_allow)"
            kept.append({**need, "message": message})
    return kept


def attach(library: Any, runtime: Any) -> CacaoService:
    """Give ``library`` CACAO import and export on the runtime's database and instances."""
    store = CredentialStore(runtime.db, runtime.secret_box, runtime.clock)
    service = CacaoService(
        library,
        store,
        runtime.connector_instances,
        max_iterations=runtime.settings.cacao_max_iterations,
        outbound=OutboundPolicy.parse(runtime.settings.outbound_allow),
    )
    library.cacao = service
    return service


__all__ = [
    "CacaoService",
    "CredentialRecord",
    "CredentialStore",
    "attach",
    "check_bindings",
    "outbound_needs",
    "parse_trigger",
    "version_for",
]
