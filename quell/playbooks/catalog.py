"""What validation needs to know about the world, without touching it.

The playbooks package never imports the engine or the connectors; the validator asks these
protocols instead. The engine's action registry is an :class:`ActionCatalog`; the configured
connector instances answer :class:`SecretCatalog`; the playbook store answers
:class:`PlaybookCatalog`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel


@dataclass(frozen=True)
class ActionSpec:
    """An action as validation sees it."""

    key: str  # connector.verb_object
    connector: str
    risk: str  # read, low, medium, high, critical
    input_model: type[BaseModel] | None = None
    secrets: tuple[str, ...] = ()  # names of the secrets the connector needs
    description: str = ""
    idempotent: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class ActionCatalog(Protocol):
    """The actions a playbook may call."""

    def spec(self, key: str) -> ActionSpec | None:
        """The action named ``key``, or None."""
        ...

    def keys(self) -> Iterable[str]:
        """Every action key."""
        ...


class SecretCatalog(Protocol):
    """Which secrets the configuration provides."""

    def provides(self, connector: str, secret: str) -> bool:
        """Whether ``connector`` has ``secret`` configured."""
        ...


class PlaybookCatalog(Protocol):
    """The playbooks a sub-playbook step may call."""

    def exists(self, playbook_id: str, version: int | None) -> bool:
        """Whether that playbook (and version, if given) is known."""
        ...


__all__ = ["ActionCatalog", "ActionSpec", "PlaybookCatalog", "SecretCatalog"]
