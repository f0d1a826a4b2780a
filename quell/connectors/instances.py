"""Configured connector instances: a connector with its settings and secrets, under a name.

``quell connector add edge-fw --type nftables --config '{"table": "quell"}'`` stores an
instance. Its settings are validated by the connector's ``Config`` model (an error names the
field) and kept in clear; its secrets must be ones the connector declares, and are sealed with
AES-256-GCM under the secret key (the data directory's ``secret.key``, or
``QUELL_SECRET_KEY``) before they reach the database. Nothing here ever returns a secret's
value except :meth:`InstanceService.resolve`, which hands it to the action runner as
:class:`~quell.sdk.SecretValue`.

Which instance an action runs against: the instance named after the connector if there is one,
else the connector's only instance, else (when the connector's config has defaults for every
field, like ``http``, and it does not declare ``needs_instance``, as ``nftables`` does) the
connector unconfigured. A connector with two instances and none
named after it must be told which (``quell action run --instance``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.connectors.registry import Registry
from quell.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from quell.governance.audit import AuditLog
from quell.governance.secrets import SecretBox
from quell.ids import new_id
from quell.sdk.actions import Connector
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import connector_instances

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Instance:
    """A configured instance as anyone may see it: never a secret's value."""

    id: str
    name: str
    connector: str
    config: dict[str, Any]
    secret_names: tuple[str, ...]
    enabled: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "name": self.name,
            "connector": self.connector,
            "config": self.config,
            "secrets": list(self.secret_names),
            "enabled": self.enabled,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Resolved:
    """What an action call needs of its instance."""

    name: str  # the instance's name, or the connector's when it runs unconfigured
    config: BaseModel | None
    secrets: dict[str, SecretValue]
    configured: bool


def _instance(row: Any) -> Instance:
    return Instance(
        id=row.id,
        name=row.name,
        connector=row.connector,
        config=dict(row.config or {}),
        secret_names=tuple(row.secret_names or ()),
        enabled=bool(row.enabled),
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _purpose(name: str) -> str:
    return f"connector:{name}"


def check_config(connector: type[Connector], config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config as the connector's model accepts it (JSON-ready); InvalidInput naming the
    field when it does not."""
    model = connector.Config
    if model is None:
        if config:
            raise InvalidInput(
                f"connector {connector.name!r} takes no configuration", field="config"
            )
        return {}
    known = {field.alias or name for name, field in model.model_fields.items()} | set(
        model.model_fields
    )
    for key in config or {}:
        if key not in known:  # a typo must not pass silently, whatever the model allows
            raise InvalidInput(
                f"config.{key}: {connector.name} has no setting {key!r} "
                f"(its settings: {', '.join(sorted(model.model_fields)) or 'none'})",
                field=f"config.{key}",
            )
    try:
        checked = model.model_validate(dict(config or {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        field = f"config.{where}" if where else "config"
        raise InvalidInput(f"{field}: {error['msg']}", field=field) from None
    return dict(orjson.loads(orjson.dumps(checked.model_dump(mode="json"))))


class InstanceService:
    """Create, change, list and remove instances; resolve one for an action call."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        box: SecretBox,
        registry: Registry,
        *,
        audit: AuditLog | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.box = box
        self.registry = registry
        self.audit = audit or AuditLog(db, clock)

    # -- reading --------------------------------------------------------------------------------

    def list_all(self, connector: str | None = None) -> list[Instance]:
        """Every instance (of ``connector``, when given), by name."""
        query = select(connector_instances).order_by(connector_instances.c.name)
        if connector is not None:
            query = query.where(connector_instances.c.connector == connector)
        with self.db.read() as conn:
            return [_instance(row) for row in conn.execute(query)]

    def get(self, name: str) -> Instance:
        """The instance called ``name``."""
        with self.db.read() as conn:
            row = conn.execute(
                select(connector_instances).where(connector_instances.c.name == name)
            ).first()
        if row is None:
            raise NotFound(f"no connector instance named {name!r}", field="name", value=name)
        return _instance(row)

    def connector_of(self, name: str) -> type[Connector]:
        """The connector class of a registered connector."""
        found = self.registry.connectors.get(name)
        if found is None:
            known = ", ".join(sorted(self.registry.connectors)) or "none"
            raise InvalidInput(
                f"no connector named {name!r}; connectors are: {known}", field="connector"
            )
        return found

    # -- writing --------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        connector: str,
        config: Mapping[str, Any] | None = None,
        secrets: Mapping[str, SecretValue] | None = None,
        *,
        created_by: str | None = None,
    ) -> Instance:
        """Add an instance; its config is checked and its secrets sealed."""
        if not _NAME.match(name):
            raise InvalidInput(
                "an instance name is 1-64 lowercase letters, digits, '.', '_' or '-'",
                field="name",
                value=name,
            )
        connector_class = self.connector_of(connector)
        checked = check_config(connector_class, config)
        given = dict(secrets or {})
        self._check_secret_names(connector_class, given)
        now = self.clock.now()
        row = {
            "id": new_id("con"),
            "name": name,
            "connector": connector,
            "config": checked,
            "secrets": self._seal(name, given),
            "secret_names": sorted(given),
            "enabled": True,
            "created_by": created_by,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.db.write() as conn:
                conn.execute(insert(connector_instances).values(**row))
        except IntegrityError:
            raise Conflict(
                f"a connector instance named {name!r} exists", field="name", value=name
            ) from None
        self.audit.record(
            created_by or "unknown", "connector.create", name,
            {"connector": connector, "config": checked, "secrets": sorted(given)},
        )  # fmt: skip
        return self.get(name)

    def update(
        self,
        name: str,
        *,
        config: Mapping[str, Any] | None = None,
        replace: bool = False,
        enabled: bool | None = None,
        by: str = "unknown",
    ) -> Instance:
        """Change the config (merged into the current one, or ``replace``d) or turn it on/off."""
        current = self.get(name)
        values: dict[str, Any] = {"updated_at": self.clock.now()}
        if config is not None:
            merged = dict(config) if replace else {**current.config, **config}
            values["config"] = check_config(self.connector_of(current.connector), merged)
        if enabled is not None:
            values["enabled"] = enabled
        with self.db.write() as conn:
            conn.execute(
                update(connector_instances)
                .where(connector_instances.c.name == name)
                .values(**values)
            )
        shown = {k: v for k, v in values.items() if k in ("config", "enabled")}
        self.audit.record(by, "connector.update", name, shown)
        return self.get(name)

    def set_secret(
        self, name: str, key: str, value: SecretValue | None, *, by: str = "unknown"
    ) -> Instance:
        """Set (or, with None, clear) one of the instance's secrets."""
        current = self.get(name)
        self._check_secret_names(self.connector_of(current.connector), {key: value})
        secrets = self._open(name)
        if value is None:
            if key not in secrets:
                raise NotFound(f"{name} has no secret {key!r}", field="secret", value=key)
            del secrets[key]
        else:
            secrets[key] = value
        with self.db.write() as conn:
            conn.execute(
                update(connector_instances)
                .where(connector_instances.c.name == name)
                .values(
                    secrets=self._seal(name, secrets),
                    secret_names=sorted(secrets),
                    updated_at=self.clock.now(),
                )
            )
        # The secret's name only, never its value.
        self.audit.record(by, "connector.secret", name, {"secret": key, "set": value is not None})
        return self.get(name)

    def remove(self, name: str, *, by: str = "unknown") -> None:
        """Delete an instance and its secrets."""
        with self.db.write() as conn:
            gone = conn.execute(
                delete(connector_instances).where(connector_instances.c.name == name)
            ).rowcount
        if not gone:
            raise NotFound(f"no connector instance named {name!r}", field="name", value=name)
        self.audit.record(by, "connector.remove", name, {})

    # -- resolving for a call ---------------------------------------------------------------------

    def resolve(self, connector: type[Connector], instance: str | None = None) -> Resolved:
        """The instance an action of ``connector`` runs against (see the module's docs)."""
        if instance is not None:
            found = self.get(instance)
            if found.connector != connector.name:
                raise InvalidInput(
                    f"instance {instance!r} is a {found.connector} connector, not {connector.name}",
                    field="instance",
                )
        else:
            candidates = self.list_all(connector.name)
            named = [item for item in candidates if item.name == connector.name]
            if named:
                found = named[0]
            elif len(candidates) == 1:
                found = candidates[0]
            elif candidates:
                names = ", ".join(item.name for item in candidates)
                raise ConfigurationError(
                    f"connector {connector.name!r} has several instances ({names}) and none "
                    f"is named {connector.name!r}: say which one"
                )
            else:
                return Resolved(connector.name, default_config(connector), {}, False)
        if not found.enabled:
            raise ConfigurationError(f"connector instance {found.name!r} is disabled")
        model = connector.Config
        config = model.model_validate(found.config) if model is not None else None
        return Resolved(found.name, config, self._open(found.name), True)

    # -- sealing ----------------------------------------------------------------------------------

    @staticmethod
    def _check_secret_names(connector: type[Connector], secrets: Mapping[str, Any]) -> None:
        for key in secrets:
            if key not in connector.secrets:
                declared = ", ".join(connector.secrets) or "none"
                raise InvalidInput(
                    f"connector {connector.name!r} declares no secret {key!r} "
                    f"(its secrets: {declared})",
                    field=f"secrets.{key}",
                )

    def _seal(self, name: str, secrets: Mapping[str, SecretValue]) -> bytes | None:
        if not secrets:
            return None
        plain = orjson.dumps({key: value.reveal() for key, value in sorted(secrets.items())})
        return self.box.seal(SecretValue(plain.decode()), purpose=_purpose(name))

    def _open(self, name: str) -> dict[str, SecretValue]:
        with self.db.read() as conn:
            sealed = conn.execute(
                select(connector_instances.c.secrets).where(connector_instances.c.name == name)
            ).scalar()
        if not sealed:
            return {}
        opened = self.box.open(bytes(sealed), purpose=_purpose(name))
        return {key: SecretValue(value) for key, value in orjson.loads(opened.reveal()).items()}


def default_config(connector: type[Connector]) -> BaseModel | None:
    if connector.needs_instance:
        raise ConfigurationError(
            f"connector {connector.name!r} acts on this host unless configured otherwise, and "
            "runs only on an instance an admin added: quell connector add NAME --type "
            f"{connector.name} --config ..."
        )
    model = connector.Config
    if model is None:
        return None
    try:
        return model()
    except ValidationError:
        raise ConfigurationError(
            f"connector {connector.name!r} needs configuration: "
            f"quell connector add {connector.name} --type {connector.name} --config ..."
        ) from None


__all__ = ["Instance", "InstanceService", "Resolved", "check_config", "default_config"]
