"""Local users on both backends: argon2id hashes, logins, rate limits, sessions, roles."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from quell.clock import ManualClock
from quell.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound, RateLimited
from quell.governance.permissions import Permission, Role
from quell.governance.tokens import is_well_formed
from quell.governance.users import SESSION_PREFIX
from quell.runtime import Runtime
from quell.sdk.secret import SecretValue
from quell.store.schema import login_failures, user_sessions, users

PASSWORD = SecretValue("correct horse battery staple")
WRONG = SecretValue("not the right password")


def _add(runtime: Runtime, name: str = "alice", role: str = "analyst") -> None:
    runtime.users.add(name, role, password=PASSWORD, by="test")


def test_password_is_stored_only_as_an_argon2id_hash_that_verifies(runtime: Runtime) -> None:
    user = runtime.users.add("alice", "analyst", password=PASSWORD, by="test")
    assert user.has_password
    assert user.status == "active"
    with runtime.db.read() as conn:
        row = dict(conn.execute(select(users)).one()._mapping)
    assert row["password_hash"].startswith("$argon2id$")
    assert all(PASSWORD.reveal() not in str(cell) for cell in row.values())
    assert runtime.users.hasher.verify(row["password_hash"], PASSWORD.reveal())
    assert "password_hash" not in user.as_dict()


def test_short_password_duplicate_name_bad_role_and_unknown_user_are_clear_errors(
    runtime: Runtime,
) -> None:
    with pytest.raises(InvalidInput, match="at least 12 characters") as short:
        runtime.users.add("bob", "analyst", password=SecretValue("short-pw"), by="test")
    assert "short-pw" not in str(short.value.to_dict())
    _add(runtime)
    with pytest.raises(Conflict):
        _add(runtime)
    with pytest.raises(InvalidInput, match="unknown role"):
        runtime.users.add("carol", "wizard", by="test")
    with pytest.raises(InvalidInput, match="user name"):
        runtime.users.add("-bad name", "analyst", by="test")
    with pytest.raises(NotFound):
        runtime.users.set_role("ghost", "admin", by="test")


def test_login_gives_a_session_token_with_the_users_role(runtime: Runtime) -> None:
    _add(runtime)
    token, session = runtime.users.login("alice", PASSWORD, "10.0.0.1")
    value = token.reveal()
    assert value.startswith(SESSION_PREFIX)
    assert is_well_formed(value, SESSION_PREFIX)
    assert not is_well_formed(value)  # not an API token
    principal = runtime.users.authenticate(value)
    assert principal.name == principal.user == "alice"
    assert principal.role == Role.ANALYST
    assert principal.token_id == session.id
    assert runtime.users.get("alice").last_login_at == runtime.clock.now()
    with runtime.db.read() as conn:
        stored = dict(conn.execute(select(user_sessions)).one()._mapping)
    assert all(value not in str(cell) for cell in stored.values())
    assert stored["client"] == "10.0.0.1"


def test_failures_are_the_same_for_unknown_user_wrong_password_and_no_password(
    runtime: Runtime,
) -> None:
    _add(runtime)
    runtime.users.add("nopass", "auditor", by="test")
    messages = set()
    for name, password in (("alice", WRONG), ("ghost", WRONG), ("nopass", WRONG)):
        with pytest.raises(AuthenticationRequired) as refused:
            runtime.users.login(name, password, "10.0.0.2")
        messages.add(str(refused.value))
    assert messages == {"invalid name or password"}
    assert runtime.users.count_failures() == 3


def test_failed_logins_per_name_are_rate_limited_until_the_window_passes(
    runtime: Runtime, clock: ManualClock
) -> None:
    _add(runtime)
    for attempt in range(5):
        with pytest.raises(AuthenticationRequired):
            runtime.users.login("alice", WRONG, f"10.0.1.{attempt}")
        clock.advance(timedelta(minutes=1))
    # Even the right password is refused now, before it is checked.
    with pytest.raises(RateLimited) as limited:
        runtime.users.login("alice", PASSWORD, "10.0.2.1")
    assert limited.value.code.value == "rate_limited"
    # The first failure (5 minutes ago) leaves the 15-minute window in 10 minutes.
    assert limited.value.retry_after == 10 * 60
    clock.advance(timedelta(minutes=10))
    _, session = runtime.users.login("alice", PASSWORD, "10.0.2.1")
    assert session.user == "alice"
    # A success clears the name's count.
    with pytest.raises(AuthenticationRequired):
        runtime.users.login("alice", WRONG, "10.0.2.1")
    runtime.users.login("alice", PASSWORD, "10.0.2.1")


def test_failed_logins_per_client_are_rate_limited_across_names(
    runtime: Runtime, clock: ManualClock
) -> None:
    _add(runtime)
    for attempt in range(20):
        with pytest.raises(AuthenticationRequired):
            runtime.users.login(f"guess{attempt}", WRONG, "203.0.113.9")
    with pytest.raises(RateLimited):
        runtime.users.login("alice", PASSWORD, "203.0.113.9")
    runtime.users.login("alice", PASSWORD, "198.51.100.1")  # another address is not limited
    clock.advance(timedelta(minutes=15, seconds=1))
    runtime.users.login("alice", PASSWORD, "203.0.113.9")
    with pytest.raises(AuthenticationRequired):
        runtime.users.login("nobody", WRONG, "203.0.113.9")
    with runtime.db.read() as conn:  # old failures are pruned as new ones come in
        names = [row.name for row in conn.execute(select(login_failures))]
    # Kept by a hash of the name as typed (a password typed there would leave no trace).
    assert names == [hashlib.sha256(b"nobody").hexdigest()[:40]]
    failed = runtime.audit.list_all(action="user.login_failed", limit=1)
    assert failed[0].actor == f"unknown:{names[0][:16]}"


def test_disabled_user_cannot_log_in_and_loses_sessions_and_tokens(runtime: Runtime) -> None:
    _add(runtime)
    session_token, _ = runtime.users.login("alice", PASSWORD)
    _, api_token = runtime.tokens.create("alice-cli", "", user="alice")
    principal = runtime.tokens.authenticate(api_token.reveal())
    assert (principal.user, principal.name) == ("alice", "alice")  # acts as the person

    disabled = runtime.users.disable("alice", by="admin")
    assert disabled.status == "disabled"
    with pytest.raises(AuthenticationRequired, match="invalid or revoked session"):
        runtime.users.authenticate(session_token.reveal())
    with pytest.raises(AuthenticationRequired, match="disabled"):
        runtime.tokens.authenticate(api_token.reveal())
    with pytest.raises(AuthenticationRequired, match="invalid name or password"):
        runtime.users.login("alice", PASSWORD)

    runtime.users.enable("alice", by="admin")
    assert runtime.tokens.authenticate(api_token.reveal()).role == Role.ANALYST
    with pytest.raises(AuthenticationRequired):  # sessions stay revoked
        runtime.users.authenticate(session_token.reveal())
    runtime.users.login("alice", PASSWORD)


def test_sessions_expire_unless_used_and_use_slides_them(
    runtime: Runtime, clock: ManualClock
) -> None:
    _add(runtime)
    token, session = runtime.users.login("alice", PASSWORD)
    assert session.expires_at == clock.now() + timedelta(hours=12)
    clock.advance(timedelta(hours=11))
    runtime.users.authenticate(token.reveal())  # used: now lasts until 11h + 12h
    clock.advance(timedelta(hours=11, minutes=59))
    runtime.users.authenticate(token.reveal())
    (live,) = runtime.users.sessions("alice")
    assert live.last_seen_at == clock.now()
    clock.advance(timedelta(hours=12))
    with pytest.raises(AuthenticationRequired, match="expired"):
        runtime.users.authenticate(token.reveal())
    assert runtime.users.sessions("alice") == []


def test_last_seen_is_written_at_most_once_a_minute(runtime: Runtime, clock: ManualClock) -> None:
    _add(runtime)
    token, session = runtime.users.login("alice", PASSWORD)
    clock.advance(30)
    runtime.users.authenticate(token.reveal())
    assert runtime.users.sessions("alice")[0].last_seen_at == session.created_at
    clock.advance(31)
    runtime.users.authenticate(token.reveal())
    assert runtime.users.sessions("alice")[0].last_seen_at == clock.now()


def test_logout_revokes_the_session(runtime: Runtime) -> None:
    _add(runtime)
    token, session = runtime.users.login("alice", PASSWORD)
    other, _ = runtime.users.login("alice", PASSWORD)
    runtime.users.logout(session.id, by="alice")
    with pytest.raises(AuthenticationRequired):
        runtime.users.authenticate(token.reveal())
    runtime.users.authenticate(other.reveal())


def test_set_password_revokes_sessions_and_only_the_new_one_works(runtime: Runtime) -> None:
    _add(runtime)
    token, _ = runtime.users.login("alice", PASSWORD)
    new = SecretValue("a different long password")
    runtime.users.set_password("alice", new, by="admin")
    with pytest.raises(AuthenticationRequired):
        runtime.users.authenticate(token.reveal())
    with pytest.raises(AuthenticationRequired):
        runtime.users.login("alice", PASSWORD)
    runtime.users.login("alice", new)


def test_role_change_applies_to_sessions_and_tokens_at_once(runtime: Runtime) -> None:
    _add(runtime, role="auditor")
    session_token, _ = runtime.users.login("alice", PASSWORD)
    record, api_token = runtime.tokens.create("alice-tok", "auditor", user="alice")
    assert record.user == "alice"
    assert not runtime.users.authenticate(session_token.reveal()).can(Permission.USERS_MANAGE)
    runtime.users.set_role("alice", "admin", by="root")
    assert runtime.users.authenticate(session_token.reveal()).role == Role.ADMIN
    assert runtime.tokens.authenticate(api_token.reveal()).can(Permission.USERS_MANAGE)
    assert runtime.tokens.get("alice-tok").role == "admin"
    with pytest.raises(InvalidInput, match="user's role"):
        runtime.tokens.create("alice-other", "analyst", user="alice")
    with pytest.raises(NotFound):
        runtime.tokens.create("ghost-tok", "", user="ghost")


def test_service_tokens_keep_their_own_role(runtime: Runtime) -> None:
    record, token = runtime.tokens.create("siem", "analyst")
    assert record.user is None
    principal = runtime.tokens.authenticate(token.reveal())
    assert principal.role == Role.ANALYST
    assert principal.user is None


def test_a_user_cannot_take_the_name_of_a_service_token(runtime: Runtime) -> None:
    """A service token acts under its name; a user of that name made afterwards would be
    someone whose audit trail, notes and four-eyes votes the token shares (the other order was
    refused already)."""
    _, token = runtime.tokens.create("zed", "approver")
    with pytest.raises(Conflict, match="name of a service token"):
        runtime.users.add("zed", "auditor", password=PASSWORD, by="test")
    assert runtime.tokens.authenticate(token.reveal()).user is None
    runtime.tokens.revoke("zed")  # once revoked, the name is free
    assert runtime.users.add("zed", "auditor", by="test").name == "zed"


def test_logins_are_audited_without_the_password(runtime: Runtime, clock: ManualClock) -> None:
    _add(runtime)
    with pytest.raises(AuthenticationRequired):
        runtime.users.login("alice", WRONG, "10.9.9.9")
    with pytest.raises(AuthenticationRequired):
        runtime.users.login("mallory", WRONG, "10.9.9.9")
    runtime.users.login("alice", PASSWORD, "10.9.9.9")
    events = {event.action: event for event in runtime.audit.list_all(action="user.")}
    failed = runtime.audit.list_all(action="user.login_failed")
    assert {e.detail["reason"] for e in failed} == {"bad_password", "unknown_user"}
    assert all(e.detail["client"] == "10.9.9.9" for e in failed)
    assert events["user.login"].actor == "alice"
    assert events["user.login"].subject == "user:alice"
    assert events["user.add"].detail == {"role": "analyst", "password_set": True}
    for event in runtime.audit.list_all():
        text = str(event.as_dict())
        assert PASSWORD.reveal() not in text
        assert WRONG.reveal() not in text
    assert runtime.audit.verify()[1] is None


def test_an_outdated_hash_is_upgraded_on_login(runtime: Runtime) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    runtime.users.add("alice", "analyst", by="test")
    with runtime.db.write() as conn:
        conn.execute(update(users).values(password_hash=weak.hash(PASSWORD.reveal())))
    runtime.users.login("alice", PASSWORD)
    with runtime.db.read() as conn:
        stored = conn.execute(select(users.c.password_hash)).scalar_one()
    assert not runtime.users.hasher.check_needs_rehash(stored)
    runtime.users.login("alice", PASSWORD)


def test_a_user_changes_their_password_and_their_other_sessions_end(runtime: Runtime) -> None:
    _add(runtime)
    token, session = runtime.users.login("alice", PASSWORD)
    other, _ = runtime.users.login("alice", PASSWORD)
    new = SecretValue("a brand new long password")
    runtime.users.change_password(
        "alice", PASSWORD, new, keep_session=session.id, client="10.1.1.1"
    )
    runtime.users.authenticate(token.reveal())  # the session that made the change stays
    with pytest.raises(AuthenticationRequired, match="invalid or revoked"):
        runtime.users.authenticate(other.reveal())
    with pytest.raises(AuthenticationRequired):
        runtime.users.login("alice", PASSWORD)
    runtime.users.login("alice", new)
    (event,) = runtime.audit.list_all(action="user.change_password", limit=1)
    assert (event.actor, event.subject) == ("alice", "user:alice")
    assert event.detail == {"client": "10.1.1.1", "sessions_revoked": 1}
    for each in runtime.audit.list_all():
        assert PASSWORD.reveal() not in str(each.as_dict())
        assert new.reveal() not in str(each.as_dict())


def test_changing_a_password_checks_the_current_and_the_new_one(runtime: Runtime) -> None:
    _add(runtime)
    runtime.users.add("oidc-only", "analyst", by="test")
    new = SecretValue("a brand new long password")
    with pytest.raises(InvalidInput, match="current password is not right") as wrong:
        runtime.users.change_password("alice", WRONG, new)
    assert wrong.value.details["field"] == "current_password"
    with pytest.raises(InvalidInput, match="at least 12 characters") as short:
        runtime.users.change_password("alice", PASSWORD, SecretValue("short"))
    assert short.value.details["field"] == "new_password"
    with pytest.raises(InvalidInput, match="same as the current"):
        runtime.users.change_password("alice", PASSWORD, PASSWORD)
    with pytest.raises(Conflict, match="no password to change"):
        runtime.users.change_password("oidc-only", PASSWORD, new)
    with pytest.raises(NotFound):
        runtime.users.change_password("ghost", PASSWORD, new)
    failed = runtime.audit.list_all(action="user.change_password_failed")
    assert [event.detail["reason"] for event in failed] == ["bad_password"]


def test_wrong_current_passwords_count_as_failed_logins(
    runtime: Runtime, clock: ManualClock
) -> None:
    _add(runtime)
    new = SecretValue("a brand new long password")
    for _ in range(5):
        with pytest.raises(InvalidInput):
            runtime.users.change_password("alice", WRONG, new, client="10.2.2.2")
    with pytest.raises(RateLimited):  # the right one too: guessing stops here
        runtime.users.change_password("alice", PASSWORD, new, client="10.2.2.2")
    with pytest.raises(RateLimited):  # and so does the login form for that name
        runtime.users.login("alice", PASSWORD, "10.3.3.3")
    clock.advance(timedelta(minutes=15, seconds=1))
    runtime.users.change_password("alice", PASSWORD, new, client="10.2.2.2")
    assert runtime.users.count_failures() == 0


def test_a_display_name_change_is_audited_with_before_and_after(runtime: Runtime) -> None:
    _add(runtime)
    runtime.users.set_display_name("alice", "Alice Example", by="admin")
    runtime.users.set_display_name("alice", None, by="admin")
    events = runtime.audit.list_all(action="user.set_display_name")
    details = sorted((e.detail["before"] or "", e.detail["after"] or "") for e in events)
    assert details == [("", "Alice Example"), ("Alice Example", "")]
