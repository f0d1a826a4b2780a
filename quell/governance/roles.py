"""Roles: the five built in (:mod:`quell.governance.permissions`) and custom ones made from the
permission list (``quell role set``, ``/api/roles``).

A custom role is a name and a set of permissions, stored in the database so that every process
sees it; each process keeps what it read for :data:`TTL` seconds (a change made in this process
counts at once). A custom role cannot take a built-in role's name, and cannot be removed while a
user or an unrevoked token holds it. Every change is audited with before and after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from quell.clock import Clock
from quell.errors import Conflict, InvalidInput, NotFound
from quell.governance.audit import AuditLog
from quell.governance.permissions import ROLE_PERMISSIONS, Permission, Role
from quell.store.database import Database
from quell.store.schema import api_tokens, roles, users

TTL = 2.0  # seconds a process uses the custom roles it read
_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")


@dataclass(frozen=True)
class RoleInfo:
    """A role and what it may do."""

    name: str
    permissions: frozenset[Permission]
    builtin: bool
    description: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "builtin": self.builtin,
            "description": self.description,
            "permissions": sorted(p.value for p in self.permissions),
        }


_BUILTIN = {
    role.value: RoleInfo(role.value, ROLE_PERMISSIONS[role], True) for role in Role
}  # fmt: skip


def parse_permissions(names: Iterable[str]) -> frozenset[Permission]:
    """Permissions by name, or InvalidInput naming the unknown one and listing them all."""
    found = set()
    for name in names:
        try:
            found.add(Permission(name.strip().lower()))
        except ValueError:
            known = ", ".join(p.value for p in Permission)
            raise InvalidInput(
                f"unknown permission {name!r}; permissions are: {known}",
                field="permissions",
                value=name,
            ) from None
    return frozenset(found)


class RoleBook:
    """Which roles exist and what each may do."""

    def __init__(self, db: Database, clock: Clock, *, audit: AuditLog | None = None) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit or AuditLog(db, clock)
        self._custom: dict[str, RoleInfo] | None = None
        self._read_at = 0.0

    def _roles(self) -> dict[str, RoleInfo]:
        now = time.monotonic()
        if self._custom is None or now - self._read_at > TTL:
            with self.db.read() as conn:
                rows = conn.execute(select(roles)).all()
            self._custom = {
                row.name: RoleInfo(
                    row.name,
                    frozenset(Permission(p) for p in row.permissions if p in _KNOWN),
                    False,
                    row.description,
                )
                for row in rows
            }
            self._read_at = now
        return {**self._custom, **_BUILTIN}

    def get(self, name: str) -> RoleInfo:
        """One role; NotFound listing the roles there are."""
        found = self._roles().get(name.strip().lower())
        if found is None:
            raise NotFound(
                f"unknown role {name!r}; roles are: {', '.join(sorted(self._roles()))}",
                field="role",
                value=name,
            )
        return found

    def parse(self, name: str) -> str:
        """A role's name as stored, or InvalidInput listing the roles there are."""
        try:
            return self.get(name).name
        except NotFound as exc:
            raise InvalidInput(exc.message, field="role", value=name) from None

    def permissions(self, name: str) -> frozenset[Permission] | None:
        """What a role may do (None: no such role)."""
        found = self._roles().get(name)
        return found.permissions if found is not None else None

    def names(self) -> list[str]:
        """Every role's name."""
        return sorted(self._roles())

    def list_all(self) -> list[RoleInfo]:
        """Built-in roles first, then custom ones, by name."""
        every = self._roles()
        return sorted(every.values(), key=lambda r: (not r.builtin, r.name))

    def define(
        self,
        name: str,
        permissions: Iterable[str],
        *,
        description: str | None = None,
        by: str,
    ) -> RoleInfo:
        """Create or change a custom role."""
        key = name.strip().lower()
        if key in _BUILTIN:
            raise Conflict(f"{key!r} is a built-in role; it cannot be changed", field="name")
        if not _NAME.match(key):
            raise InvalidInput(
                "a role name is 2-32 lowercase letters, digits, '_' or '-', starting with a letter",
                field="name",
                value=name,
            )
        granted = parse_permissions(permissions)
        if not granted:
            raise InvalidInput("a role needs at least one permission", field="permissions")
        now = self.clock.now()
        values = {
            "permissions": sorted(p.value for p in granted),
            "description": description,
            "updated_at": now,
        }
        with self.db.write() as conn:
            before = conn.execute(select(roles).where(roles.c.name == key)).first()
            if before is None:
                conn.execute(
                    insert(roles).values(name=key, created_by=by, created_at=now, **values)
                )
            else:
                conn.execute(update(roles).where(roles.c.name == key).values(values))
        self._custom = None
        self.audit.record(
            by,
            "role.update" if before is not None else "role.create",
            f"role:{key}",
            {
                "before": {"permissions": list(before.permissions)} if before else None,
                "after": {"permissions": values["permissions"], "description": description},
            },
        )
        return self.get(key)

    def remove(self, name: str, *, by: str) -> None:
        """Delete a custom role nobody holds."""
        found = self.get(name)
        if found.builtin:
            raise Conflict(f"{found.name!r} is a built-in role; it cannot be removed")
        with self.db.write() as conn:
            held = conn.execute(
                select(func.count()).select_from(users).where(users.c.role == found.name)
            ).scalar_one()
            held += conn.execute(
                select(func.count())
                .select_from(api_tokens)
                .where(
                    api_tokens.c.role == found.name,
                    api_tokens.c.revoked_at.is_(None),
                    # A user's token acts with the user's role, whatever it was made with.
                    api_tokens.c.user_id.is_(None),
                )
            ).scalar_one()
            if held:
                raise Conflict(
                    f"role {found.name!r} is held by {held} user(s) or token(s); move them to "
                    "another role first",
                    field="name",
                )
            conn.execute(delete(roles).where(roles.c.name == found.name))
        self._custom = None
        self.audit.record(
            by,
            "role.remove",
            f"role:{found.name}",
            {"before": {"permissions": sorted(p.value for p in found.permissions)}},
        )


_KNOWN = frozenset(p.value for p in Permission)

__all__ = ["TTL", "RoleBook", "RoleInfo", "parse_permissions"]
