"""Built-in roles."""

from __future__ import annotations

import pytest

from quell.errors import InvalidInput
from quell.governance.permissions import (
    ROLE_PERMISSIONS,
    Permission,
    Role,
    parse_role,
    permissions_of,
)


def test_admin_holds_every_permission() -> None:
    assert permissions_of(Role.ADMIN) == frozenset(Permission)


def test_auditor_only_reads() -> None:
    granted = permissions_of(Role.AUDITOR)
    assert Permission.AUDIT_READ in granted
    assert all(permission.value.endswith(":read") for permission in granted)


def test_only_admin_manages_tokens_and_users() -> None:
    for role, granted in ROLE_PERMISSIONS.items():
        if role is not Role.ADMIN:
            assert Permission.TOKENS_MANAGE not in granted
            assert Permission.USERS_MANAGE not in granted


def test_authors_write_playbooks_but_do_not_publish_them() -> None:
    assert Permission.PLAYBOOKS_WRITE in permissions_of(Role.AUTHOR)
    assert Permission.PLAYBOOKS_PUBLISH not in permissions_of(Role.AUTHOR)
    assert Permission.PLAYBOOKS_PUBLISH in permissions_of(Role.APPROVER)


def test_every_role_can_read_system_information() -> None:
    assert all(Permission.SYSTEM_READ in granted for granted in ROLE_PERMISSIONS.values())


def test_parse_role_is_case_insensitive_and_lists_roles_on_error() -> None:
    assert parse_role(" Analyst ") is Role.ANALYST
    with pytest.raises(InvalidInput, match="admin, author, analyst, approver, auditor"):
        parse_role("root")
