"""The ldap connector against a real OpenLDAP slapd (see tests/connectors/slapd.py).

Whether an action worked is told by the directory itself, through OpenLDAP's own client tools:
a disabled account's simple bind fails (ppolicy), a reset password binds and the old one does
not, a group's member values change. The Active Directory mode runs against the same slapd,
on AD-like entries (``sAMAccountName``, ``userAccountControl``, ``unicodePwd``) under
``ou=ad``. Every test makes its own accounts; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from quell.connectors.ldap import (
    AccountIn,
    AccountOut,
    GroupsOut,
    Ldap,
    MembershipOut,
    PasswordOut,
)
from quell.connectors.registry import Registry
from quell.sdk import (
    ActionContext,
    AuthError,
    Landed,
    PermanentError,
    Reconciliation,
    RiskLevel,
    SecretValue,
    TargetNotFound,
    TransientError,
)
from quell.sdk.actions import signature_models
from tests.connectors.slapd import (
    AD_BASE_DN,
    AD_QUARANTINE_DN,
    GROUPS_DN,
    LOCKED_FOREVER,
    PEOPLE_DN,
    POSIX_QUARANTINE_DN,
    QUARANTINE_DN,
    READER_DN,
    SERVICE_DN,
    SUFFIX,
    UNNAMED_HOST,
    SlapdServer,
    free_port,
)

pytestmark = pytest.mark.requires("slapd")

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _ctx(password: str, *, dry_run: bool = False) -> ActionContext:
    """The context as the engine builds it for one attempt."""
    return ActionContext(
        run_id=f"run-{uuid.uuid4().hex[:8]}",
        step_id="contain",
        attempt=1,
        idempotency_key=uuid.uuid4().hex,
        dry_run=dry_run,
        secrets={"bind_password": SecretValue(password)},
    )


def _openldap(slapd: SlapdServer, **overrides: Any) -> Ldap:
    settings: dict[str, Any] = {
        "url": slapd.url,
        "bind_dn": SERVICE_DN,
        "base_dn": SUFFIX,
        "user_search_base": PEOPLE_DN,
        "quarantine_group_dn": QUARANTINE_DN,
        "timeout": 10,
    }
    return Ldap(Ldap.Config(**(settings | overrides)))


def _ad(slapd: SlapdServer, **overrides: Any) -> Ldap:
    settings: dict[str, Any] = {
        "url": slapd.url,
        "bind_dn": SERVICE_DN,
        "base_dn": AD_BASE_DN,
        "mode": "ad",
        "user_filter": "(sAMAccountName={username})",
        "quarantine_group_dn": AD_QUARANTINE_DN,
    }
    return Ldap(Ldap.Config(**(settings | overrides)))


def _call(
    connector: Ldap,
    name: str,
    username: str,
    *,
    password: str | None = None,
    dry_run: bool = False,
    slapd: SlapdServer | None = None,
) -> Any:
    """Call action ``name`` with its input validated by its own input model."""
    method = getattr(connector, name)
    input_model, _ = signature_models(getattr(Ldap, name))
    assert input_model is not None
    params = input_model.model_validate({"username": username})
    if password is None:
        assert slapd is not None, "give the server (for its service password) or a password"
        password = slapd.service_password
    return _run(method(_ctx(password, dry_run=dry_run), params))


def _reconcile(connector: Ldap, hook: str, username: str, slapd: SlapdServer) -> Reconciliation:
    """Call reconcile hook ``hook`` as the engine would after an attempt of unknown outcome."""
    ctx = _ctx(slapd.service_password)
    found: Reconciliation = _run(getattr(connector, hook)(ctx, AccountIn(username=username)))
    return found


def _members(slapd: SlapdServer, group: str, attribute: str = "member") -> set[str]:
    return {v.decode().lower() for v in slapd.read(group, attribute).get(attribute.lower(), [])}


# -- the connector as the engine sees it ----------------------------------------------------


def test_the_registry_takes_it_with_its_declared_risks_and_hooks() -> None:
    registry = Registry()
    registry.add(Ldap)  # also checks that every reconcile hook is a method

    expected = {
        "ldap.disable_account": (RiskLevel.HIGH, "enable_account", "account_disabled", True),
        "ldap.enable_account": (RiskLevel.MEDIUM, "disable_account", "account_enabled", True),
        "ldap.reset_password": (RiskLevel.HIGH, None, None, True),
        "ldap.add_to_quarantine_group": (
            RiskLevel.MEDIUM,
            "remove_from_quarantine_group",
            "in_quarantine_group",
            True,
        ),
        "ldap.remove_from_quarantine_group": (
            RiskLevel.LOW,
            "add_to_quarantine_group",
            "out_of_quarantine_group",
            True,
        ),
        "ldap.get_groups": (RiskLevel.READ, None, None, False),
    }
    assert {key: registry.get(key).meta.risk for key in expected} == {
        key: value[0] for key, value in expected.items()
    }
    for key, (_, reverts, reconcile, dry_run) in expected.items():
        meta = registry.get(key).meta
        assert (meta.reverts, meta.reconcile, meta.supports_dry_run) == (
            reverts,
            reconcile,
            dry_run,
        )
        assert registry.get(key).input_model is AccountIn
    assert registry.get("ldap.get_groups").meta.idempotent
    assert registry.get("ldap.disable_account").meta.openc2 == ("set", "er:account", "er")
    assert Ldap.secrets == ("bind_password",)
    assert Ldap.has_health_check()


def test_an_instance_built_as_the_engine_builds_it_answers_health(slapd: SlapdServer) -> None:
    # The instance's stored settings, validated by the connector's own Config model.
    config = Ldap.Config.model_validate(
        {
            "url": slapd.url,
            "bind_dn": SERVICE_DN,
            "base_dn": SUFFIX,
            "start_tls": True,
            "ca_file": str(slapd.ca_file),
        }
    )
    connector = Ldap(config)
    ctx = ActionContext(
        run_id="run-1",
        step_id="check",
        attempt=1,
        idempotency_key="run-1/check",
        secrets={"bind_password": SecretValue(slapd.service_password)},
    )

    described = _run(connector.health(ctx))

    assert described == (
        f"127.0.0.1:{slapd.port} (StartTLS, openldap mode): bound as {SERVICE_DN}, read {SUFFIX}"
    )


def test_health_over_ldaps_and_a_missing_base_dn(slapd: SlapdServer) -> None:
    ctx = _ctx(slapd.service_password)
    over_tls = _openldap(slapd, url=slapd.ldaps_url, ca_file=slapd.ca_file)
    assert "(LDAPS, openldap mode)" in _run(over_tls.health(ctx))

    missing = _openldap(slapd, base_dn=f"ou=nowhere,{SUFFIX}")
    with pytest.raises(PermanentError, match=r"the base_dn 'ou=nowhere,dc=quell,dc=test'"):
        _run(missing.health(_ctx(slapd.service_password)))


# -- disable and enable: OpenLDAP with ppolicy -----------------------------------------------


def test_disable_makes_the_bind_fail_and_enable_lets_it_back(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    connector = _openldap(slapd)
    assert slapd.can_bind(user.dn, user.password)

    disabled = _call(connector, "disable_account", user.username, slapd=slapd)

    assert isinstance(disabled, AccountOut)
    assert (disabled.dn, disabled.disabled, disabled.changed) == (user.dn, True, True)
    assert slapd.value(user.dn, "pwdAccountLockedTime") == LOCKED_FOREVER
    assert not slapd.can_bind(user.dn, user.password)  # ppolicy refuses the right password

    again = _call(connector, "disable_account", user.username, slapd=slapd)
    assert (again.disabled, again.changed) == (True, False)

    landed = _reconcile(connector, "account_disabled", user.username, slapd)
    assert landed.state is Landed.LANDED
    assert landed.output is not None
    assert landed.output["dn"] == user.dn
    not_yet = _reconcile(connector, "account_enabled", user.username, slapd)
    assert not_yet.state is Landed.NOT_LANDED

    enabled = _call(connector, "enable_account", user.username, slapd=slapd)

    assert (enabled.disabled, enabled.changed) == (False, True)
    assert slapd.value(user.dn, "pwdAccountLockedTime") is None
    assert slapd.can_bind(user.dn, user.password)
    assert _call(connector, "enable_account", user.username, slapd=slapd).changed is False
    assert _reconcile(connector, "account_enabled", user.username, slapd).state is Landed.LANDED


def test_enable_also_lifts_a_lockout_with_a_timestamp(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    # What ppolicy writes after too many failed binds (the policy has no lockout duration).
    slapd.ldapmodify(
        f"dn: {user.dn}\nchangetype: modify\nreplace: pwdAccountLockedTime\n"
        "pwdAccountLockedTime: 20240101000000Z\n"
    )
    assert not slapd.can_bind(user.dn, user.password)

    enabled = _call(_openldap(slapd), "enable_account", user.username, slapd=slapd)

    assert (enabled.disabled, enabled.changed) == (False, True)
    assert slapd.can_bind(user.dn, user.password)


def test_a_dry_run_of_disable_changes_nothing(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    connector = _openldap(slapd)

    pretended = _call(connector, "disable_account", user.username, slapd=slapd, dry_run=True)

    assert pretended.dry_run
    assert (pretended.disabled, pretended.changed, pretended.would_change) == (False, False, True)
    assert slapd.value(user.dn, "pwdAccountLockedTime") is None
    assert slapd.can_bind(user.dn, user.password)


def test_dry_runs_of_the_other_writes_change_nothing(slapd: SlapdServer, tmp_path: Path) -> None:
    user = slapd.add_user()
    connector = _openldap(slapd, password_delivery="file", password_delivery_dir=tmp_path)
    _call(connector, "disable_account", user.username, slapd=slapd)

    enable = _call(connector, "enable_account", user.username, slapd=slapd, dry_run=True)
    add = _call(connector, "add_to_quarantine_group", user.username, slapd=slapd, dry_run=True)
    remove = _call(
        connector, "remove_from_quarantine_group", user.username, slapd=slapd, dry_run=True
    )
    reset = _call(connector, "reset_password", user.username, slapd=slapd, dry_run=True)

    assert (enable.disabled, enable.would_change) == (True, True)
    assert (add.member, add.would_change) == (False, True)
    assert (remove.member, remove.would_change) == (False, False)
    assert isinstance(reset, PasswordOut)
    assert (reset.changed, reset.delivered_to, reset.would_deliver_to) == (
        False,
        None,
        str(tmp_path),
    )
    assert slapd.value(user.dn, "pwdAccountLockedTime") == LOCKED_FOREVER
    assert user.dn.lower() not in _members(slapd, QUARANTINE_DN)
    assert list(tmp_path.iterdir()) == []
    _call(connector, "enable_account", user.username, slapd=slapd)
    assert slapd.can_bind(user.dn, user.password)  # the password was not changed


# -- disable and enable: Active Directory's userAccountControl -------------------------------


@pytest.mark.parametrize(
    ("before", "disabled_value"),
    [
        (512, 514),  # NORMAL_ACCOUNT
        (66048, 66050),  # NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
        (4260352, 4260354),  # NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD | DONT_REQ_PREAUTH
    ],
)
def test_ad_disable_sets_only_the_accountdisable_bit(
    slapd: SlapdServer, before: int, disabled_value: int
) -> None:
    user = slapd.add_user("ad", uac=before)
    connector = _ad(slapd)

    disabled = _call(connector, "disable_account", user.username, slapd=slapd)

    assert (disabled.dn, disabled.disabled, disabled.changed) == (user.dn, True, True)
    assert disabled.user_account_control == disabled_value
    assert slapd.value(user.dn, "userAccountControl") == str(disabled_value)
    repeated = _call(connector, "disable_account", user.username, slapd=slapd)
    assert (repeated.changed, repeated.user_account_control) == (False, disabled_value)

    enabled = _call(connector, "enable_account", user.username, slapd=slapd)

    assert (enabled.disabled, enabled.changed, enabled.user_account_control) == (
        False,
        True,
        before,
    )
    assert slapd.value(user.dn, "userAccountControl") == str(before)


def test_ad_an_account_disabled_elsewhere_is_left_alone_and_reconciles(
    slapd: SlapdServer,
) -> None:
    user = slapd.add_user("ad", uac=514)
    connector = _ad(slapd)

    disabled = _call(connector, "disable_account", user.username, slapd=slapd)

    assert (disabled.disabled, disabled.changed) == (True, False)
    assert slapd.value(user.dn, "userAccountControl") == "514"
    landed = _reconcile(connector, "account_disabled", user.username, slapd)
    assert landed.state is Landed.LANDED
    assert landed.output is not None
    assert landed.output["user_account_control"] == 514


def test_ad_mode_refuses_an_entry_without_useraccountcontrol(slapd: SlapdServer) -> None:
    user = slapd.add_user()  # an OpenLDAP-style account, found here by uid
    connector = _ad(slapd, base_dn=SUFFIX, user_filter="(uid={username})")

    with pytest.raises(PermanentError, match="has no userAccountControl") as raised:
        _call(connector, "disable_account", user.username, slapd=slapd)
    assert raised.value.code == "not_an_ad_account"


# -- reset_password --------------------------------------------------------------------------


def test_reset_password_delivers_a_working_password_to_a_private_file_only(
    slapd: SlapdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # anything the stdlib loggers (ldap3's too) would say
    user = slapd.add_user()
    folder = tmp_path / "handover"
    folder.mkdir()
    connector = _openldap(
        slapd,
        start_tls=True,
        ca_file=slapd.ca_file,
        password_delivery="file",
        password_delivery_dir=folder,
        password_length=20,
    )

    with capture_logs() as logs:
        reset = _call(connector, "reset_password", user.username, slapd=slapd)

    assert isinstance(reset, PasswordOut)
    assert (reset.dn, reset.changed, reset.delivery) == (user.dn, True, "file")
    assert reset.delivered_to is not None
    delivered = Path(reset.delivered_to)
    assert delivered.parent == folder
    assert user.username in delivered.name
    assert stat.S_IMODE(delivered.stat().st_mode) == 0o600
    new_password = delivered.read_text().strip()
    assert len(new_password) == 20

    assert slapd.can_bind(user.dn, new_password)
    assert not slapd.can_bind(user.dn, user.password)
    assert (slapd.value(user.dn, "userPassword") or "").startswith("{SSHA}")  # hashed by slapd
    assert new_password not in reset.model_dump_json()
    assert new_password.encode() not in orjson.dumps(logs, default=str)
    assert new_password not in caplog.text
    assert [entry["event"] for entry in logs] == ["ldap_password_reset"]
    assert logs[0]["delivered_to"] == reset.delivered_to


def test_reset_password_without_delivery_sets_a_password_nobody_knows(
    slapd: SlapdServer,
) -> None:
    user = slapd.add_user()

    with capture_logs() as logs:
        reset = _call(_openldap(slapd), "reset_password", user.username, slapd=slapd)

    assert (reset.changed, reset.delivery, reset.delivered_to) == (True, "none", None)
    assert not slapd.can_bind(user.dn, user.password)
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("ldap_password_sent_unencrypted", "warning"),  # plain ldap:// without StartTLS
        ("ldap_password_reset", "info"),
    ]


def test_reset_password_changes_nothing_when_it_cannot_deliver(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    user = slapd.add_user()
    connector = _openldap(
        slapd, password_delivery="file", password_delivery_dir=tmp_path / "missing"
    )

    with pytest.raises(PermanentError, match="is not a directory") as raised:
        _call(connector, "reset_password", user.username, slapd=slapd)

    assert raised.value.code == "delivery_failed"
    assert slapd.can_bind(user.dn, user.password)


def test_reset_password_removes_the_file_when_the_directory_refuses(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    user = slapd.add_user()
    reader = _openldap(
        slapd, bind_dn=READER_DN, password_delivery="file", password_delivery_dir=tmp_path
    )

    with pytest.raises(PermanentError, match="lacks the access rights"):
        _call(reader, "reset_password", user.username, password=slapd.reader_password)

    assert list(tmp_path.iterdir()) == []
    assert slapd.can_bind(user.dn, user.password)


def test_ad_reset_password_writes_unicodepwd_over_ldaps(slapd: SlapdServer, tmp_path: Path) -> None:
    user = slapd.add_user("ad")
    connector = _ad(
        slapd,
        url=slapd.ldaps_url,
        ca_file=slapd.ca_file,
        password_delivery="file",
        password_delivery_dir=tmp_path,
    )

    reset = _call(connector, "reset_password", user.username, slapd=slapd)

    assert reset.delivered_to is not None
    new_password = Path(reset.delivered_to).read_text().strip()
    assert len(new_password) == 24
    # What Active Directory wants: the password in double quotes, UTF-16-LE.
    assert slapd.read(user.dn, "unicodePwd")["unicodepwd"] == [
        f'"{new_password}"'.encode("utf-16-le")
    ]


def test_ad_reset_password_is_refused_without_tls(slapd: SlapdServer, tmp_path: Path) -> None:
    user = slapd.add_user("ad")
    connector = _ad(slapd, password_delivery="file", password_delivery_dir=tmp_path)

    with pytest.raises(PermanentError, match="only over TLS") as raised:
        _call(connector, "reset_password", user.username, slapd=slapd)

    assert raised.value.code == "tls_required"
    assert slapd.read(user.dn, "unicodePwd") == {}
    assert list(tmp_path.iterdir()) == []


# -- the quarantine group and get_groups -----------------------------------------------------


@pytest.mark.parametrize("kind", ["posix", "ad"])
def test_quarantine_group_by_member_dn(slapd: SlapdServer, kind: str) -> None:
    user = slapd.add_user(kind)  # type: ignore[arg-type]
    connector = _openldap(slapd) if kind == "posix" else _ad(slapd)
    group = QUARANTINE_DN if kind == "posix" else AD_QUARANTINE_DN

    added = _call(connector, "add_to_quarantine_group", user.username, slapd=slapd)

    assert isinstance(added, MembershipOut)
    assert (added.group_dn, added.member, added.changed) == (group, True, True)
    assert user.dn.lower() in _members(slapd, group)
    assert _call(connector, "add_to_quarantine_group", user.username, slapd=slapd).changed is False
    groups = _call(connector, "get_groups", user.username, slapd=slapd)
    assert groups.in_quarantine_group is True
    in_group = _reconcile(connector, "in_quarantine_group", user.username, slapd)
    assert in_group.state is Landed.LANDED

    removed = _call(connector, "remove_from_quarantine_group", user.username, slapd=slapd)

    assert (removed.member, removed.changed) == (False, True)
    assert user.dn.lower() not in _members(slapd, group)
    assert SERVICE_DN.lower() in _members(slapd, group)  # the placeholder member stays
    again = _call(connector, "remove_from_quarantine_group", user.username, slapd=slapd)
    assert again.changed is False
    out = _reconcile(connector, "out_of_quarantine_group", user.username, slapd)
    assert out.state is Landed.LANDED


def test_quarantine_group_by_memberuid(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    connector = _openldap(
        slapd, quarantine_group_dn=POSIX_QUARANTINE_DN, group_member_attribute="memberUid"
    )

    added = _call(connector, "add_to_quarantine_group", user.username, slapd=slapd)

    assert (added.member, added.changed) == (True, True)
    assert user.username in _members(slapd, POSIX_QUARANTINE_DN, "memberUid")
    groups = _call(connector, "get_groups", user.username, slapd=slapd)
    assert [g.dn for g in groups.groups] == [POSIX_QUARANTINE_DN]
    assert groups.in_quarantine_group is True

    removed = _call(connector, "remove_from_quarantine_group", user.username, slapd=slapd)

    assert (removed.member, removed.changed) == (False, True)
    assert user.username not in _members(slapd, POSIX_QUARANTINE_DN, "memberUid")


def test_removing_a_groups_last_member_is_refused_clearly(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    group = slapd.add_group(f"solo-{user.username}", members=[user.dn])
    connector = _openldap(slapd, quarantine_group_dn=group)

    with pytest.raises(PermanentError, match="needs at least one member") as raised:
        _call(connector, "remove_from_quarantine_group", user.username, slapd=slapd)

    assert raised.value.code == "last_member"
    assert _members(slapd, group) == {user.dn.lower()}


def test_get_groups_finds_member_and_memberuid_groups(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    other = slapd.add_user()
    by_dn = slapd.add_group(f"staff-{user.username}", members=[user.dn, other.dn])
    by_uid = slapd.add_group(f"posix-{user.username}", member_uids=[user.username])
    slapd.add_group(f"others-{user.username}", members=[other.dn])
    slapd.add_group(f"posix-others-{user.username}", member_uids=[other.username])

    groups = _call(_openldap(slapd), "get_groups", user.username, slapd=slapd)

    assert isinstance(groups, GroupsOut)
    assert groups.dn == user.dn
    assert [(g.dn, g.name) for g in groups.groups] == sorted(
        [(by_uid, f"posix-{user.username}"), (by_dn, f"staff-{user.username}")],
        key=lambda pair: pair[0].lower(),
    )
    assert groups.in_quarantine_group is False
    unconfigured = _openldap(slapd, quarantine_group_dn=None)
    assert _call(unconfigured, "get_groups", user.username, slapd=slapd).in_quarantine_group is None


def test_the_quarantine_actions_need_a_configured_group(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    connector = _openldap(slapd, quarantine_group_dn=None)

    with pytest.raises(PermanentError, match="no quarantine_group_dn is configured"):
        _call(connector, "add_to_quarantine_group", user.username, slapd=slapd)


def test_a_missing_quarantine_group_is_target_not_found(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    connector = _openldap(slapd, quarantine_group_dn=f"cn=gone,{GROUPS_DN}")

    with pytest.raises(TargetNotFound, match=r"the group 'cn=gone,ou=groups,dc=quell,dc=test'"):
        _call(connector, "add_to_quarantine_group", user.username, slapd=slapd)


# -- errors ----------------------------------------------------------------------------------


_ACTIONS = [
    "disable_account",
    "enable_account",
    "reset_password",
    "add_to_quarantine_group",
    "remove_from_quarantine_group",
    "get_groups",
]


@pytest.mark.parametrize("action", _ACTIONS)
def test_an_unknown_user_is_target_not_found_naming_it(slapd: SlapdServer, action: str) -> None:
    with pytest.raises(TargetNotFound, match=r"no account 'nobody-here' in ou=people") as raised:
        _call(_openldap(slapd), action, "nobody-here", slapd=slapd)
    assert raised.value.retryable is False
    assert raised.value.details == {"username": "nobody-here"}


@pytest.mark.parametrize("username", ["*", "*)(uid=*", "u*", "*)(|(uid=*", "x)(objectClass=*"])
def test_filter_characters_in_a_username_match_nobody_else(
    slapd: SlapdServer, username: str
) -> None:
    bystander = slapd.add_user()
    connector = _openldap(slapd)

    with pytest.raises(TargetNotFound, match="no account"):
        _call(connector, "disable_account", username, slapd=slapd)

    assert slapd.can_bind(bystander.dn, bystander.password)
    assert slapd.value(bystander.dn, "pwdAccountLockedTime") is None


def test_a_username_with_filter_characters_finds_exactly_that_account(
    slapd: SlapdServer,
) -> None:
    user = slapd.add_user(prefix="o(b)*")  # uid=o(b)*u0012ab34cd: escaped once, found
    bystander = slapd.add_user()

    disabled = _call(_openldap(slapd), "disable_account", user.username, slapd=slapd)

    assert (disabled.dn, disabled.changed) == (user.dn, True)
    assert not slapd.can_bind(user.dn, user.password)
    assert slapd.can_bind(bystander.dn, bystander.password)


def test_a_user_filter_that_matches_several_accounts_is_refused(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    slapd.add_user()
    connector = _openldap(slapd, user_filter="(|(uid={username})(objectClass=posixAccount))")

    with pytest.raises(PermanentError, match="more than one entry") as raised:
        _call(connector, "disable_account", user.username, slapd=slapd)

    assert raised.value.code == "ambiguous_account"
    assert slapd.can_bind(user.dn, user.password)


def test_bad_credentials_are_an_auth_error_without_the_password(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    wrong = "not-the-" + slapd.service_password

    with pytest.raises(AuthError, match=r"refused the bind as 'cn=quell,ou=services") as raised:
        _call(_openldap(slapd), "disable_account", user.username, password=wrong)

    assert wrong not in str(raised.value)
    assert wrong not in repr(raised.value.details)
    assert raised.value.retryable is False
    with pytest.raises(AuthError, match="invalid credentials"):
        _call(
            _openldap(slapd, bind_dn=f"cn=ghost,{SUFFIX}"), "get_groups", user.username, slapd=slapd
        )
    assert slapd.value(user.dn, "pwdAccountLockedTime") is None


def test_an_empty_or_missing_bind_password_is_refused_before_any_bind(
    slapd: SlapdServer,
) -> None:
    connector = _openldap(slapd)
    with pytest.raises(AuthError, match="the bind_password secret is empty"):
        _call(connector, "get_groups", "anyone", password="")

    no_secret = ActionContext(run_id="r", step_id="s", attempt=1, idempotency_key="k")
    with pytest.raises(PermanentError, match="bind_password secret is not configured"):
        _run(connector.get_groups(no_secret, AccountIn(username="anyone")))


def test_an_account_without_write_access_gets_a_clear_refusal(slapd: SlapdServer) -> None:
    user = slapd.add_user()
    reader = _openldap(slapd, bind_dn=READER_DN)

    assert _call(reader, "get_groups", user.username, password=slapd.reader_password).dn == user.dn
    with pytest.raises(
        PermanentError, match=r"'cn=reader,ou=services,dc=quell,dc=test' lacks"
    ) as raised:
        _call(reader, "disable_account", user.username, password=slapd.reader_password)

    assert raised.value.code == "insufficient_access"
    assert slapd.can_bind(user.dn, user.password)


def test_an_unreachable_server_is_a_transient_error(slapd: SlapdServer) -> None:
    closed = free_port()  # nothing listens there
    connector = _openldap(slapd, url=f"ldap://127.0.0.1:{closed}", timeout=5)

    with pytest.raises(
        TransientError, match=rf"cannot reach the directory at ldap://127.0.0.1:{closed}"
    ) as raised:
        _call(connector, "disable_account", "anyone", slapd=slapd)

    assert raised.value.retryable is True
    assert raised.value.code == "unreachable"
    with pytest.raises(TransientError):
        _run(connector.health(_ctx(slapd.service_password)))


@pytest.mark.parametrize("transport", ["ldaps", "start_tls"])
def test_a_server_certificate_that_is_not_trusted_is_refused(
    slapd: SlapdServer, transport: str, tmp_path: Path
) -> None:
    # The system's CAs do not include the test CA that signed slapd's certificate.
    if transport == "ldaps":
        connector = _openldap(slapd, url=slapd.ldaps_url)
    else:
        connector = _openldap(slapd, start_tls=True)

    with pytest.raises(
        PermanentError, match=r"the server's certificate was not accepted \(.+\); give the CA"
    ) as raised:
        _run(connector.health(_ctx(slapd.service_password)))

    assert raised.value.code == "tls_failed"
    assert slapd.service_password not in str(raised.value)


def test_a_host_name_the_certificate_does_not_name_is_refused(slapd: SlapdServer) -> None:
    # The certificate names 127.0.0.1 and localhost; slapd also listens on 127.0.0.2.
    connector = _openldap(
        slapd, url=f"ldaps://{UNNAMED_HOST}:{slapd.tls_port}", ca_file=slapd.ca_file
    )

    with pytest.raises(PermanentError, match=r"not accepted \(IP address mismatch") as raised:
        _run(connector.health(_ctx(slapd.service_password)))

    assert raised.value.code == "tls_failed"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "http://127.0.0.1"}, "ldap:// or ldaps://"),
        ({"url": "ldap://admin:secret@127.0.0.1"}, "must not carry credentials"),
        ({"url": "ldap://127.0.0.1:99999"}, "not a number from 1 to 65535"),
        ({"url": "ldap://127.0.0.1/dc=x?cn"}, "only the scheme, host and port"),
        ({"url": "ldaps://127.0.0.1", "start_tls": True}, "ldaps:// is TLS already"),
        ({"base_dn": "not a dn"}, "is not a valid LDAP DN"),
        ({"user_filter": "(uid=%s)"}, "must contain {username}"),
        ({"user_filter": "uid={username}"}, "parenthesized"),
        ({"password_delivery": "file"}, "needs a password_delivery_dir"),
        ({"password_delivery": "file", "password_delivery_dir": "rel"}, "absolute path"),
        ({"password_delivery": "email"}, "'none' or 'file'"),
        ({"password_length": 12}, "greater than or equal to 16"),
        ({"disable_attribute": "pwd Locked"}, "not an LDAP attribute name"),
        ({"mode": "freeipa"}, "'openldap' or 'ad'"),
        ({"bind_password": "x"}, "Extra inputs"),
    ],
)
def test_bad_settings_fail_validation_naming_what_is_wrong(
    change: dict[str, Any], message: str
) -> None:
    settings = {"url": "ldap://127.0.0.1", "bind_dn": SERVICE_DN, "base_dn": SUFFIX} | change
    with pytest.raises(ValidationError) as raised:
        Ldap.Config.model_validate(settings)
    assert message in str(raised.value)
    assert "admin:secret" not in str(raised.value)  # inputs are not echoed


@pytest.mark.parametrize("inputs", [{}, {"username": ""}, {"username": "a", "group": "x"}])
def test_bad_inputs_fail_validation(inputs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AccountIn.model_validate(inputs)
