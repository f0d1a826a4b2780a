"""Playbooks as people manage them: compile text against what is installed, store a version,
show one with its source and IR, make one active (its triggers live) or stop its triggers.

The checks are the compiler's: an unknown action, inputs that do not match an action's schema,
a secret no configuration provides, a sub-playbook that is not stored, and everything the
language itself refuses, each reported with file, line and column (:class:`PlaybookInvalid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select

from quell.errors import NotFound
from quell.store.schema import playbook_versions

if TYPE_CHECKING:
    from quell.engine.store import PlaybookStore, PlaybookVersion
    from quell.playbooks.catalog import ActionCatalog, SecretCatalog
    from quell.playbooks.ir import Playbook
    from quell.store.database import Database


@dataclass(frozen=True)
class StoredPlaybook:
    """A stored version with the text it was added from and the IR it compiled to."""

    version: PlaybookVersion
    source: str | None
    ir: dict[str, Any]
    versions: list[PlaybookVersion]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API."""
        return {
            **self.version.as_dict(),
            "source": self.source,
            "ir": self.ir,
            "versions": [version.as_dict() for version in self.versions],
        }


class PlaybookLibrary:
    """Compile, store, show and (de)activate playbooks."""

    def __init__(
        self,
        db: Database,
        store: PlaybookStore,
        actions: ActionCatalog,
        secrets: SecretCatalog | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.actions = actions
        self.secrets = secrets

    def compile(self, text: str | bytes, file: str | None = None) -> Playbook:
        """The IR of ``text``; PlaybookInvalid (or InvalidInput for unreadable text) if not."""
        from quell.playbooks.compiler import parse_playbook

        return parse_playbook(
            text, file, actions=self.actions, secrets=self.secrets, playbooks=self.store
        )

    def add(
        self,
        text: str | bytes,
        file: str | None = None,
        *,
        created_by: str | None = None,
        activate: bool = False,
    ) -> PlaybookVersion:
        """Compile and store ``text`` (once per content); with ``activate`` make it the live one."""
        playbook = self.compile(text, file)
        source = text.decode("utf-8") if isinstance(text, bytes) else text
        return self.store.register(
            playbook, source=source, created_by=created_by, activate=activate
        )

    def versions(self, playbook_id: str) -> list[PlaybookVersion]:
        """Every stored version of one playbook, newest first (NotFound when none)."""
        found = [v for v in self.store.list_all() if v.playbook_id == playbook_id]
        if not found:
            raise NotFound(f"no playbook {playbook_id!r}", field="playbook", value=playbook_id)
        return found

    def show(self, playbook_id: str, version: int | None = None) -> StoredPlaybook:
        """The active version (or the given one, else the newest) with its source and IR."""
        chosen = self.store.resolve(playbook_id, version)
        with self.db.read() as conn:
            row = conn.execute(
                select(playbook_versions.c.source, playbook_versions.c.ir).where(
                    playbook_versions.c.id == chosen.id
                )
            ).one()
        return StoredPlaybook(chosen, row.source, orjson.loads(row.ir), self.versions(playbook_id))

    def activate(self, playbook_id: str, version: int | None = None) -> PlaybookVersion:
        """Make a version (the newest stored when none is given) the active one."""
        if version is None:
            chosen = self.versions(playbook_id)[0]
        else:
            chosen = self.store.resolve(playbook_id, version)
        return self.store.register(self.store.ir(chosen.id), activate=True)

    def deactivate(self, playbook_id: str) -> None:
        """Stop the playbook's triggers; its runs go on (NotFound when none is active)."""
        self.store.deactivate(playbook_id)


__all__ = ["PlaybookLibrary", "StoredPlaybook"]
