"""The action registry: every connector found, every action it declares, looked up by key.

Connectors are found through the ``quell.connectors`` entry-point group (built-ins register
there too, in Quell's own ``pyproject.toml``) and through the modules named in the
``QUELL_PLUGINS`` setting, whose :class:`~quell.sdk.Connector` subclasses are taken as they
are defined. Two connectors of one name are refused: an action key must mean one thing.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import structlog
from pydantic import BaseModel

from quell.errors import ConfigurationError, InvalidInput, NotFound
from quell.playbooks.catalog import ActionSpec
from quell.sdk.actions import ActionMeta, Connector, RiskLevel, action_meta, signature_models

log = structlog.get_logger(__name__)
ENTRY_POINT_GROUP = "quell.connectors"


@dataclass(frozen=True)
class ActionDef:
    """One action: its key, its connector, its method and models, and what it declares."""

    key: str
    connector: type[Connector]
    method: str
    meta: ActionMeta
    input_model: type[BaseModel] | None
    output_model: type[BaseModel] | None

    @property
    def is_read(self) -> bool:
        """Whether it only reads (safe in dry-run, never a containment)."""
        return self.meta.risk is RiskLevel.READ

    def spec(self) -> ActionSpec:
        """The action as playbook validation sees it."""
        return ActionSpec(
            key=self.key,
            connector=self.connector.name,
            risk=self.meta.risk.value,
            input_model=self.input_model,
            secrets=tuple(self.connector.secrets),
            description=self.meta.title
            or (inspect.getdoc(getattr(self.connector, self.method)) or ""),
            idempotent=self.meta.idempotent,
        )


class Registry:
    """Connectors by name and actions by key."""

    def __init__(self) -> None:
        self.connectors: dict[str, type[Connector]] = {}
        self.actions: dict[str, ActionDef] = {}

    @classmethod
    def discover(cls, plugins: Sequence[str] = ()) -> Registry:
        """Every connector of the entry-point group and of the plugin modules."""
        registry = cls()
        for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                loaded = entry.load()
            except Exception as exc:  # noqa: BLE001  (a broken plugin must not stop Quell)
                log.error("connector_not_loaded", entry_point=entry.name, error=repr(exc))
                continue
            registry.add(loaded)
        for module_name in plugins:
            registry.add_module(_import(module_name))
        return registry

    def add_module(self, module: ModuleType) -> None:
        """Add the connectors a module defines."""
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Connector)
                and value is not Connector
                and value.__module__ == module.__name__
                and "name" in vars(value)
            ):
                self.add(value)

    def add(self, connector: type[Connector]) -> None:
        """Add a connector class and its actions."""
        if not (inspect.isclass(connector) and issubclass(connector, Connector)):
            raise ConfigurationError(f"{connector!r} is not a Connector class")
        name = getattr(connector, "name", "")
        known = self.connectors.get(name)
        if known is connector:
            return
        if known is not None:
            raise ConfigurationError(
                f"two connectors are named {name!r}: {known.__module__}.{known.__qualname__} "
                f"and {connector.__module__}.{connector.__qualname__}"
            )
        found: dict[str, ActionDef] = {}
        for attribute, function in inspect.getmembers(connector, inspect.iscoroutinefunction):
            meta = action_meta(function)
            if meta is None:
                continue
            key = f"{name}.{meta.name}"
            input_model, output_model = signature_models(function)
            found[key] = ActionDef(key, connector, attribute, meta, input_model, output_model)
        for definition in found.values():
            for hook in (definition.meta.reconcile,):
                if hook is not None and not callable(getattr(connector, hook, None)):
                    raise ConfigurationError(
                        f"{definition.key}: reconcile hook {hook!r} is not a method of {name}"
                    )
        self.connectors[name] = connector
        self.actions.update(found)

    def get(self, key: str) -> ActionDef:
        """The action ``key``; NotFound names it."""
        found = self.actions.get(key)
        if found is None:
            raise NotFound(f"no action {key!r}", field="action", value=key)
        return found

    # ActionCatalog, for playbook validation.
    def spec(self, key: str) -> ActionSpec | None:
        """The action as validation sees it, or None."""
        found = self.actions.get(key)
        return None if found is None else found.spec()

    def keys(self) -> Iterable[str]:
        """Every action key."""
        return self.actions.keys()

    # Policy that names actions and connectors (limits, approval rules) is checked against
    # what there is: a name that matches nothing is a mistake that would never apply.

    def check_action(self, key: str, field: str = "action") -> None:
        """InvalidInput unless ``key`` names one action, exactly."""
        if key in self.actions:
            return
        if any(mark in key for mark in "*?["):
            raise InvalidInput(
                f"{key!r} is a pattern: name one action exactly (one limit per action)",
                field=field,
            )
        raise InvalidInput(f"no action {key!r}{_suggest(key, self.actions)}", field=field)

    def check_pattern(self, pattern: str, field: str = "actions") -> None:
        """InvalidInput unless the action pattern (``nftables.*``) matches an action."""
        if any(fnmatch.fnmatchcase(key, pattern) for key in self.actions):
            return
        raise InvalidInput(
            f"{pattern!r} matches no action{_suggest(pattern, self.actions)}", field=field
        )

    def check_connector(self, name: str, field: str = "connectors") -> None:
        """InvalidInput unless there is a connector called ``name``."""
        if name in self.connectors:
            return
        raise InvalidInput(f"no connector {name!r}{_suggest(name, self.connectors)}", field=field)


def _suggest(wrong: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(wrong, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_action(definition: ActionDef) -> dict[str, Any]:
    """An action as the CLI and the API show it: what it does, its risk, its schemas."""
    meta = definition.meta
    return {
        "key": definition.key,
        "title": meta.title,
        "description": inspect.getdoc(getattr(definition.connector, definition.method)) or "",
        "risk": meta.risk.value,
        "idempotent": meta.idempotent,
        "supports_dry_run": meta.supports_dry_run,
        "reverts": f"{definition.connector.name}.{meta.reverts}" if meta.reverts else None,
        "reconcile": meta.reconcile is not None,
        "openc2": (
            dict(zip(("action", "target", "profile"), meta.openc2, strict=True))
            if meta.openc2
            else None
        ),
        "concurrency": meta.concurrency,
        "rate": meta.rate,
        "input_schema": (
            definition.input_model.model_json_schema(by_alias=True)
            if definition.input_model is not None
            else None
        ),
        "output_schema": (
            definition.output_model.model_json_schema(by_alias=True, mode="serialization")
            if definition.output_model is not None
            else None
        ),
    }


def describe_connector(registry: Registry, connector: type[Connector]) -> dict[str, Any]:
    """A connector: its config schema, declared secrets, limits and actions."""
    return {
        "name": connector.name,
        "title": connector.title,
        "description": inspect.getdoc(connector) or "",
        "config_schema": connector.Config.model_json_schema() if connector.Config else None,
        "secrets": list(connector.secrets),
        "concurrency": connector.concurrency,
        "rate": connector.rate,
        "health_check": connector.has_health_check(),
        "actions": [
            describe_action(found)
            for key, found in sorted(registry.actions.items())
            if found.connector is connector
        ],
    }


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(
            f"QUELL_PLUGINS names {name!r}, which cannot be imported: {exc}", setting="plugins"
        ) from None


__all__ = ["ENTRY_POINT_GROUP", "ActionDef", "Registry", "describe_action", "describe_connector"]
