"""API tokens on both backends: hash-only storage, revocation, expiry, last use."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from quell.clock import ManualClock
from quell.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound
from quell.governance.permissions import Permission, Role
from quell.governance.tokens import TOKEN_PREFIX, hash_token, is_well_formed
from quell.runtime import Runtime
from quell.store.schema import api_tokens


def test_created_token_is_prefixed_checksummed_and_stored_only_as_hash(runtime: Runtime) -> None:
    record, token = runtime.tokens.create("siem", "analyst")
    value = token.reveal()
    assert value.startswith(TOKEN_PREFIX)
    assert is_well_formed(value)
    assert record.hint == value[-4:]
    with runtime.db.read() as conn:
        rows = [dict(row._mapping) for row in conn.execute(select(api_tokens))]
    assert len(rows) == 1
    assert rows[0]["token_hash"] == hash_token(value)
    assert all(value not in str(cell) for cell in rows[0].values())


def test_authenticate_gives_the_roles_permissions(runtime: Runtime) -> None:
    _, token = runtime.tokens.create("approver-bot", "approver")
    principal = runtime.tokens.authenticate(token.reveal())
    assert principal.name == "approver-bot"
    assert principal.role == Role.APPROVER.value
    assert principal.can(Permission.APPROVALS_DECIDE)
    assert not principal.can(Permission.TOKENS_MANAGE)


def test_revoked_token_is_refused_and_its_name_can_be_reused(runtime: Runtime) -> None:
    _, old = runtime.tokens.create("ci", "admin")
    runtime.tokens.revoke("ci")
    with pytest.raises(AuthenticationRequired, match="invalid or revoked"):
        runtime.tokens.authenticate(old.reveal())
    _, new = runtime.tokens.create("ci", "auditor")
    assert runtime.tokens.authenticate(new.reveal()).role == Role.AUDITOR.value
    listed = runtime.tokens.list_all(include_revoked=True)
    assert [t.name for t in listed] == ["ci", "ci"]
    assert [t.name for t in runtime.tokens.list_all()] == ["ci"]


def test_two_active_tokens_cannot_share_a_name(runtime: Runtime) -> None:
    runtime.tokens.create("dup", "admin")
    with pytest.raises(Conflict, match="unrevoked token named 'dup' exists"):
        runtime.tokens.create("dup", "admin")


@pytest.mark.parametrize(
    ("name", "role", "field"),
    [("", "admin", "name"), ("has space", "admin", "name"), ("ok", "overlord", "role")],
)
def test_bad_names_and_roles_are_refused_by_field(
    runtime: Runtime, name: str, role: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        runtime.tokens.create(name, role)
    assert caught.value.details["field"] == field


def test_a_mistyped_token_is_refused_before_any_lookup(runtime: Runtime) -> None:
    _, token = runtime.tokens.create("typo", "admin")
    value = token.reveal()
    flipped = value[:10] + ("x" if value[10] != "x" else "y") + value[11:]
    assert not is_well_formed(flipped)
    with pytest.raises(AuthenticationRequired, match="malformed"):
        runtime.tokens.authenticate(flipped)
    with pytest.raises(AuthenticationRequired, match="malformed"):
        runtime.tokens.authenticate("")


def test_unknown_well_formed_token_is_refused(runtime: Runtime) -> None:
    from quell.governance.tokens import generate_token

    with pytest.raises(AuthenticationRequired, match="invalid or revoked"):
        runtime.tokens.authenticate(generate_token().reveal())


def test_token_expires_on_the_clock(runtime: Runtime, clock: ManualClock) -> None:
    _, token = runtime.tokens.create("temp", "analyst", expires_in=timedelta(hours=1))
    runtime.tokens.authenticate(token.reveal())
    clock.advance(timedelta(minutes=59))
    runtime.tokens.authenticate(token.reveal())
    clock.advance(timedelta(minutes=1))
    with pytest.raises(AuthenticationRequired, match="expired"):
        runtime.tokens.authenticate(token.reveal())
    assert runtime.tokens.get("temp").status(clock.now()) == "expired"


def test_last_used_is_recorded_at_most_once_a_minute(runtime: Runtime, clock: ManualClock) -> None:
    _, token = runtime.tokens.create("busy", "analyst")
    assert runtime.tokens.get("busy").last_used_at is None
    first = clock.now()
    runtime.tokens.authenticate(token.reveal())
    assert runtime.tokens.get("busy").last_used_at == first
    clock.advance(30)
    runtime.tokens.authenticate(token.reveal())
    assert runtime.tokens.get("busy").last_used_at == first
    clock.advance(31)
    runtime.tokens.authenticate(token.reveal())
    assert runtime.tokens.get("busy").last_used_at == clock.now()


def test_revoking_or_getting_an_unknown_name_is_not_found(runtime: Runtime) -> None:
    with pytest.raises(NotFound):
        runtime.tokens.revoke("ghost")
    with pytest.raises(NotFound):
        runtime.tokens.get("ghost")
