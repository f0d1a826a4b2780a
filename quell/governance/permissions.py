"""Permissions and the built-in roles that bundle them.

A permission is ``area:verb``. Routes and services ask for a permission, never for a role, so a
custom role (a later issue) is just another set of permissions.
"""

from __future__ import annotations

from enum import StrEnum

from quell.errors import InvalidInput


class Permission(StrEnum):
    """Everything an API caller can be allowed to do."""

    SYSTEM_READ = "system:read"
    TOKENS_READ = "tokens:read"
    TOKENS_MANAGE = "tokens:manage"
    ALERTS_READ = "alerts:read"
    ALERTS_INGEST = "alerts:ingest"
    SOURCES_MANAGE = "sources:manage"
    SUPPRESSIONS_MANAGE = "suppressions:manage"
    INCIDENTS_READ = "incidents:read"
    INCIDENTS_WRITE = "incidents:write"
    PLAYBOOKS_READ = "playbooks:read"
    PLAYBOOKS_WRITE = "playbooks:write"
    PLAYBOOKS_PUBLISH = "playbooks:publish"
    RUNS_READ = "runs:read"
    RUNS_EXECUTE = "runs:execute"
    RUNS_CONTROL = "runs:control"
    APPROVALS_DECIDE = "approvals:decide"
    APPROVALS_MANAGE = "approvals:manage"  # the approval policy
    TASKS_COMPLETE = "tasks:complete"
    CONNECTORS_READ = "connectors:read"
    CONNECTORS_MANAGE = "connectors:manage"
    INTEL_READ = "intel:read"
    INTEL_MANAGE = "intel:manage"
    USERS_MANAGE = "users:manage"
    AUDIT_READ = "audit:read"


class Role(StrEnum):
    """The built-in roles."""

    ADMIN = "admin"
    AUTHOR = "author"
    ANALYST = "analyst"
    APPROVER = "approver"
    AUDITOR = "auditor"


P = Permission

_READ_ALL = frozenset(p for p in Permission if p.value.endswith(":read"))

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    # Everything, including tokens, users and connector secrets.
    Role.ADMIN: frozenset(Permission),
    # Writes and tests playbooks and tunes detections; cannot publish playbooks (review is
    # someone else's job).
    Role.AUTHOR: frozenset(
        {
            P.SYSTEM_READ,
            P.ALERTS_READ,
            P.SUPPRESSIONS_MANAGE,
            P.INCIDENTS_READ,
            P.PLAYBOOKS_READ,
            P.PLAYBOOKS_WRITE,
            P.RUNS_READ,
            P.RUNS_EXECUTE,
            P.CONNECTORS_READ,
            P.INTEL_READ,
        }
    ),
    # Works the queue: incidents, runs (start, cancel, pause, resume, retry), manual tasks,
    # intel lookups, manual ingest. Deciding approvals is someone else's job (four eyes).
    Role.ANALYST: frozenset(
        {
            P.SYSTEM_READ,
            P.ALERTS_READ,
            P.ALERTS_INGEST,
            P.INCIDENTS_READ,
            P.INCIDENTS_WRITE,
            P.PLAYBOOKS_READ,
            P.RUNS_READ,
            P.RUNS_EXECUTE,
            P.RUNS_CONTROL,
            P.TASKS_COMPLETE,
            P.CONNECTORS_READ,
            P.INTEL_READ,
        }
    ),
    # Decides approvals and publications; reads what it needs to decide.
    Role.APPROVER: frozenset(
        {
            P.SYSTEM_READ,
            P.ALERTS_READ,
            P.INCIDENTS_READ,
            P.PLAYBOOKS_READ,
            P.PLAYBOOKS_PUBLISH,
            P.RUNS_READ,
            P.APPROVALS_DECIDE,
            P.CONNECTORS_READ,
            P.INTEL_READ,
        }
    ),
    # Reads everything, changes nothing.
    Role.AUDITOR: _READ_ALL,
}


def parse_role(name: str) -> Role:
    """The role called ``name``, or InvalidInput listing the roles there are."""
    try:
        return Role(name.strip().lower())
    except ValueError:
        raise InvalidInput(
            f"unknown role {name!r}; roles are: {', '.join(role.value for role in Role)}",
            field="role",
            value=name,
        ) from None


def builtin_permissions(role: str) -> frozenset[Permission] | None:
    """What the built-in role called ``role`` may do (None: it is not one)."""
    try:
        return ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return None


def permissions_of(role: Role) -> frozenset[Permission]:
    """What ``role`` may do."""
    return ROLE_PERMISSIONS[role]
