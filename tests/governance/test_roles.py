"""Custom roles on both backends: made from the permission list, held by users and tokens
(who act with exactly those permissions), changed and removed under rules, all audited."""

from __future__ import annotations

import pytest

from quell.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound
from quell.governance.permissions import Permission
from quell.runtime import Runtime
from quell.sdk import SecretValue

PASSWORD = "correct horse battery staple"


def test_a_custom_role_grants_exactly_its_permissions(runtime: Runtime) -> None:
    book = runtime.roles
    made = book.define("triage", ["alerts:read", "incidents:write"], description="L1", by="root")
    assert (made.builtin, made.description) == (False, "L1")
    assert made.permissions == {Permission.ALERTS_READ, Permission.INCIDENTS_WRITE}
    runtime.users.add("tia", "triage", password=SecretValue(PASSWORD), by="root")
    session = runtime.users.login("tia", SecretValue(PASSWORD))[0].reveal()
    principal = runtime.users.authenticate(session)
    assert (principal.role, principal.permissions) == ("triage", made.permissions)
    token = runtime.tokens.create("triage-bot", "triage")[1].reveal()
    assert runtime.tokens.authenticate(token).permissions == made.permissions

    # Changed: the holders act with the new set from their next request (in this process at
    # once; elsewhere within the cache's TTL).
    book.define("triage", ["alerts:read"], by="root")
    assert runtime.users.authenticate(session).permissions == {Permission.ALERTS_READ}
    with pytest.raises(Conflict, match="held by 2"):
        book.remove("triage", by="root")
    runtime.users.set_role("tia", "analyst", by="root")
    runtime.tokens.revoke("triage-bot")
    book.remove("triage", by="root")
    with pytest.raises(NotFound, match="unknown role 'triage'"):
        book.get("triage")
    assert runtime.users.authenticate(session).role == "analyst"

    events = [(e.action, e.subject) for e in reversed(runtime.audit.list_all(action="role."))]
    assert events == [
        ("role.create", "role:triage"),
        ("role.update", "role:triage"),
        ("role.remove", "role:triage"),
    ]
    update = runtime.audit.list_all(action="role.update")[0]
    assert update.detail["before"] == {"permissions": ["alerts:read", "incidents:write"]}
    assert update.detail["after"]["permissions"] == ["alerts:read"]


def test_a_users_token_does_not_hold_the_role_the_user_had_when_it_was_made(
    runtime: Runtime,
) -> None:
    """A user's token acts with the user's current role: after the user moves to another
    role, nothing holds the old one, and it can be removed."""
    runtime.roles.define("tokener", ["tokens:manage", "system:read"], by="root")
    runtime.users.add("eve", "tokener", by="root")
    runtime.tokens.create("eve-cli", "", user="eve")
    with pytest.raises(Conflict, match="held by 1"):
        runtime.roles.remove("tokener", by="root")
    runtime.users.set_role("eve", "analyst", by="root")
    runtime.roles.remove("tokener", by="root")
    assert "tokener" not in runtime.roles.names()


def test_bad_roles_are_refused_with_the_reason(runtime: Runtime) -> None:
    book = runtime.roles
    with pytest.raises(Conflict, match="built-in role"):
        book.define("admin", ["alerts:read"], by="root")
    with pytest.raises(InvalidInput, match="unknown permission 'alerts:delete'"):
        book.define("x-role", ["alerts:delete"], by="root")
    with pytest.raises(InvalidInput, match="at least one permission"):
        book.define("x-role", [], by="root")
    with pytest.raises(InvalidInput, match="role name"):
        book.define("X Role!", ["alerts:read"], by="root")
    with pytest.raises(InvalidInput, match="unknown role 'ghost'"):
        runtime.users.add("gus", "ghost", by="root")
    with pytest.raises(InvalidInput, match="unknown role 'ghost'"):
        runtime.tokens.create("ghost-bot", "ghost")
    with pytest.raises(Conflict, match="built-in"):
        book.remove("auditor", by="root")
    assert [r.name for r in book.list_all() if not r.builtin] == []


def test_a_token_whose_role_vanished_is_refused(runtime: Runtime) -> None:
    runtime.roles.define("temp", ["system:read"], by="root")
    token = runtime.tokens.create("temp-bot", "temp")[1].reveal()
    from sqlalchemy import delete

    from quell.store.schema import roles

    with runtime.db.write() as conn:  # removed behind Quell's back
        conn.execute(delete(roles).where(roles.c.name == "temp"))
    runtime.roles._custom = None
    with pytest.raises(AuthenticationRequired, match="unknown role 'temp'"):
        runtime.tokens.authenticate(token)
