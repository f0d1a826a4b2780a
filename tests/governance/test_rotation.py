"""Rotating the data key on both backends: every kind of sealed secret re-sealed, a real
``quell secrets rotate-key`` killed mid-way and finished by the next run, the old key gone."""

from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, update

from quell.cli import cli
from quell.engine.cacao import CredentialStore
from quell.errors import ConfigurationError, Conflict
from quell.governance.keyring import KeyKind, KeyRing, KeyState
from quell.governance.rotation import rotate, status
from quell.governance.secrets import SecretBox, key_id_of
from quell.ingest.sources import SourceService
from quell.intel.feeds import FeedService
from quell.runtime import Runtime
from quell.sdk import SecretValue
from quell.store import migrate
from quell.store.schema import (
    audit_events,
    connector_instances,
    intel_feeds,
    oidc_logins,
    playbook_credentials,
    secret_keys,
    sources,
)
from tests.cli.processes import run_quell

HOOK = "https://hooks.example/T000/B000/hook-canary-"
HMAC = "hmac-canary-"
TOKEN = "feed-token-canary-"
VERIFIER = "pkce-verifier-canary-"
CACAO = "cacao-password-canary-"
PER_KIND = 2  # secrets of each kind
TOTAL = 5 * PER_KIND


def _store_secrets(runtime: Runtime) -> None:
    """PER_KIND secrets in each table that holds sealed values."""
    feeds = FeedService.for_runtime(runtime)
    credentials = CredentialStore(runtime.db, runtime.secret_box, runtime.clock)
    for n in range(PER_KIND):
        credentials.put(  # an imported CACAO playbook's inline credentials
            f"playbook--x/user-auth--{n}", "playbook--x", "user-auth",
            {"username": "root", "password": f"{CACAO}{n}"}, by="setup",
        )  # fmt: skip
        runtime.connector_instances.create(
            f"chat-{n}", "notify", {"format": "slack"}, {"webhook_url": SecretValue(f"{HOOK}{n}")}
        )
        runtime.sources.create(f"hook-{n}", "http", "ecs", secret=SecretValue(f"{HMAC}{n}"))
        feeds.add(
            f"feed-{n}",
            kind="url",
            url="https://intel.example/list",
            format="list",
            secret={"token": SecretValue(f"{TOKEN}{n}")},
        )
        state_hash = f"{n:064x}"  # an OIDC login in flight, as quell.governance.oidc keeps it
        sealed = runtime.secret_box.seal(
            SecretValue(f"{VERIFIER}{n}"), purpose=f"oidc_login:{state_hash}"
        )
        now = runtime.clock.now()
        with runtime.db.write() as conn:
            conn.execute(
                insert(oidc_logins).values(
                    state_hash=state_hash, provider="idp", nonce=f"nonce-{n}",
                    code_verifier=sealed, created_at=now, expires_at=now + timedelta(minutes=10),
                )
            )  # fmt: skip


def _opened(runtime: Runtime) -> dict[str, str]:
    """Every stored secret, opened by a fresh key ring (as another process would)."""
    box = SecretBox(runtime.secret_key, KeyRing(runtime.secret_key, runtime.db, runtime.clock))
    notify = runtime.registry.connectors["notify"]
    found: dict[str, str] = {}
    with runtime.db.read() as conn:
        feed_rows = list(conn.execute(select(intel_feeds.c.name, intel_feeds.c.secret)))
        logins = list(conn.execute(select(oidc_logins.c.state_hash, oidc_logins.c.code_verifier)))
    for n in range(PER_KIND):
        resolved = runtime.connector_instances.resolve(notify, f"chat-{n}")
        found[f"chat-{n}"] = resolved.secrets["webhook_url"].reveal()
        secret = SourceService(runtime.db, runtime.clock, box).secret(f"hook-{n}")
        assert secret is not None
        found[f"hook-{n}"] = secret.reveal()
    for name, sealed in feed_rows:
        opened = box.open(bytes(sealed), purpose=f"intel-feed:{name}").reveal()
        found[name] = json.loads(opened)["token"]
    for state_hash, sealed in logins:
        verifier = box.open(bytes(sealed), purpose=f"oidc_login:{state_hash}").reveal()
        found[f"login-{int(state_hash, 16)}"] = verifier
    credentials = CredentialStore(runtime.db, box, runtime.clock)
    for n in range(PER_KIND):
        opened = credentials.get(f"playbook--x/user-auth--{n}")
        found[f"cacao-{n}"] = opened["password"].reveal()
    return found


EXPECTED = {
    **{f"chat-{n}": f"{HOOK}{n}" for n in range(PER_KIND)},
    **{f"hook-{n}": f"{HMAC}{n}" for n in range(PER_KIND)},
    **{f"feed-{n}": f"{TOKEN}{n}" for n in range(PER_KIND)},
    **{f"login-{n}": f"{VERIFIER}{n}" for n in range(PER_KIND)},
    **{f"cacao-{n}": f"{CACAO}{n}" for n in range(PER_KIND)},
}


def _sealed_values(runtime: Runtime) -> list[bytes]:
    with runtime.db.read() as conn:
        return [
            bytes(value)
            for column in (
                connector_instances.c.secrets,
                sources.c.secret,
                intel_feeds.c.secret,
                oidc_logins.c.code_verifier,
                playbook_credentials.c.secret,
            )
            for value in conn.execute(select(column).where(column.is_not(None))).scalars()
        ]


def _key_ids(runtime: Runtime) -> set[str]:
    found = set()
    for sealed in _sealed_values(runtime):
        key_id = key_id_of(sealed)
        assert key_id is not None
        found.add(key_id.hex())
    return found


def _keys(runtime: Runtime) -> dict[str, tuple[str, str, bool]]:
    """Key id -> (kind, state, has material)."""
    with runtime.db.read() as conn:
        return {
            row.id: (row.kind, row.state, row.wrapped is not None)
            for row in conn.execute(select(secret_keys))
        }


def test_every_kind_of_secret_opens_after_rotations_and_the_old_key_is_gone(
    runtime: Runtime,
) -> None:
    _store_secrets(runtime)
    before = status(runtime.secret_box, runtime.db)
    [derived] = before.keys
    assert (derived.kind, derived.state) == (KeyKind.DERIVED, KeyState.ACTIVE)
    assert before.totals() == {derived.id: TOTAL}
    assert set(before.values) == {
        "connector_instances.secrets",
        "sources.secret",
        "intel_feeds.secret",
        "oidc_logins.code_verifier",
        "playbook_credentials.secret",
    }
    old_copy = runtime.sources.box.seal(SecretValue("kept-by-an-attacker"), purpose="source:x")

    first = rotate(runtime.secret_box, runtime.db, runtime.audit, actor="cli:admin")
    assert first.retired
    assert not first.resumed
    assert first.already == 0
    assert first.old_key == derived.id
    assert first.resealed == {
        "connector_instances.secrets": PER_KIND,
        "sources.secret": PER_KIND,
        "intel_feeds.secret": PER_KIND,
        "oidc_logins.code_verifier": PER_KIND,
        "playbook_credentials.secret": PER_KIND,
    }
    assert _opened(runtime) == EXPECTED
    assert _key_ids(runtime) == {first.new_key}
    assert _keys(runtime) == {
        derived.id: ("derived", "retired", False),
        first.new_key: ("random", "active", True),
    }
    # The derived key is refused from now on, in this process and in a new one.
    for ring in (runtime.secret_box.ring, KeyRing(runtime.secret_key, runtime.db)):
        with pytest.raises(ConfigurationError, match="retired on"):
            SecretBox(runtime.secret_key, ring).open(old_copy, purpose="source:x")

    # New secrets are sealed under the new key; a second rotation moves everything again.
    runtime.sources.set_secret("hook-0", SecretValue(f"{HMAC}0"))
    second = rotate(runtime.secret_box, runtime.db, runtime.audit, actor="cli:admin")
    assert second.retired
    assert second.old_key == first.new_key
    assert second.total_resealed == TOTAL
    assert _opened(runtime) == EXPECTED
    assert _key_ids(runtime) == {second.new_key}
    keys = _keys(runtime)
    assert keys[first.new_key] == ("random", "retired", False)  # its material is erased
    assert keys[second.new_key] == ("random", "active", True)
    after = status(runtime.secret_box, runtime.db)
    assert after.totals() == {second.new_key: TOTAL}
    assert not after.rotating
    assert after.unknown() == {}

    # Audited with key ids and counts, never a value.
    events = runtime.audit.list_all(action="secrets.")
    assert [event.action for event in reversed(events)] == [
        "secrets.rotation_started",
        "secrets.key_retired",
        "secrets.rotation_started",
        "secrets.key_retired",
    ]
    assert events[0].subject == first.new_key
    assert events[0].detail["resealed"]["sources.secret"] == PER_KIND
    with runtime.db.read() as conn:
        trail = json.dumps(
            [dict(row._mapping) for row in conn.execute(select(audit_events))], default=str
        )
    for canary in (HOOK, HMAC, TOKEN, VERIFIER):
        assert canary not in trail


def test_a_value_written_under_the_old_key_during_a_rotation_is_moved_too(
    runtime: Runtime,
) -> None:
    """A process that sealed with the old key just before the rotation began, and wrote after
    its first pass went by, is caught by the next pass before the old key is retired."""
    _store_secrets(runtime)
    stale = SourceService(runtime.db, runtime.clock, SecretBox(runtime.secret_key))  # derived only
    written: list[int] = []

    def late_writer(count: int) -> None:
        if count == 2 * PER_KIND and not written:  # every source is re-sealed by now
            stale.set_secret("hook-0", SecretValue("changed-in-flight"))
            written.append(count)

    result = rotate(
        runtime.secret_box, runtime.db, runtime.audit, actor="test", after_each=late_writer
    )
    assert written
    assert result.retired
    assert result.passes == 3  # all, then the late one, then nothing left
    assert result.total_resealed == TOTAL + 1
    assert runtime.sources.secret("hook-0") == SecretValue("changed-in-flight")
    assert _key_ids(runtime) == {result.new_key}


def test_a_value_that_does_not_open_holds_the_old_key_back_until_it_is_set_again(
    runtime: Runtime, tmp_path: Path
) -> None:
    _store_secrets(runtime)
    with runtime.db.write() as conn:  # a sealed value copied onto another row: it won't open
        moved = conn.execute(select(sources.c.secret).where(sources.c.name == "hook-0")).scalar()
        conn.execute(update(sources).where(sources.c.name == "hook-1").values(secret=moved))

    blocked = rotate(runtime.secret_box, runtime.db, runtime.audit, actor="test")
    assert not blocked.retired
    assert blocked.not_opening == ["sources.secret hook-1"]
    assert runtime.audit.list_all(action="secrets.rotation_blocked")
    assert runtime.sources.secret("hook-0") == SecretValue(f"{HMAC}0")  # the rest moved
    env = {
        "QUELL_DATABASE_URL": runtime.settings.resolved_database_url,
        "QUELL_DATA_DIR": str(tmp_path / "data"),
    }
    again = CliRunner().invoke(cli, ["secrets", "rotate-key"], env=env, catch_exceptions=False)
    assert again.exit_code == 1
    assert f"key {blocked.old_key} is still in use and stays: sources.secret hook-1" in again.stderr

    runtime.sources.set_secret("hook-1", SecretValue(f"{HMAC}1"))
    finished = rotate(runtime.secret_box, runtime.db, runtime.audit, actor="test")
    assert finished.resumed
    assert finished.retired
    assert finished.new_key == blocked.new_key  # the same rotation, finished
    assert finished.total_resealed == 0  # set_secret sealed under the new key already
    assert finished.already == TOTAL
    assert _opened(runtime) == EXPECTED


@pytest.mark.parametrize("crash_after", [0, 3, TOTAL])
def test_a_rotation_killed_mid_way_is_finished_by_the_next_run(
    runtime: Runtime, database_url: str, tmp_path: Path, crash_after: int
) -> None:
    _store_secrets(runtime)
    env = {"QUELL_DATA_DIR": str(tmp_path / "data"), "QUELL_DATABASE_URL": database_url}
    [derived] = runtime.secret_box.ring.records()

    killed = run_quell(
        "secrets", "rotate-key", env={**env, "QUELL_CRASH_AFTER_RESEALS": str(crash_after)}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    keys = _keys(runtime)
    assert keys[derived.id] == ("derived", "retiring", False)
    [new_key] = [key for key, (_, state, _) in keys.items() if state == "active"]
    assert _opened(runtime) == EXPECTED  # nothing lost: both keys open
    moved = sum(key_id_of(sealed) == bytes.fromhex(new_key) for sealed in _sealed_values(runtime))
    assert moved == crash_after  # each re-sealed value committed on its own

    shown = run_quell("secrets", "status", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["rotation_unfinished"] is True
    assert {key["id"]: key["values"] for key in report["keys"]} == {
        derived.id: TOTAL - crash_after,
        new_key: crash_after,
    }

    again = run_quell("secrets", "rotate-key", env=env)
    assert again.returncode == 0, again.stderr
    assert f"finished the rotation from {derived.id} to {new_key}" in again.stdout
    assert f"{TOTAL - crash_after} secret(s) re-sealed" in again.stdout
    assert f"key {derived.id} retired" in again.stdout
    assert _opened(runtime) == EXPECTED
    assert _key_ids(runtime) == {new_key}
    assert _keys(runtime) == {
        derived.id: ("derived", "retired", False),
        new_key: ("random", "active", True),
    }
    actions = [event.action for event in reversed(runtime.audit.list_all(action="secrets."))]
    assert actions == [
        "secrets.rotation_started",
        "secrets.rotation_resumed",
        "secrets.key_retired",
    ]


def test_the_schema_does_not_downgrade_past_the_key_table_once_a_key_was_made(
    runtime: Runtime,
) -> None:
    _store_secrets(runtime)
    rotate(runtime.secret_box, runtime.db, runtime.audit, actor="test")
    with pytest.raises(Conflict, match="would be lost"):
        migrate.downgrade(runtime.db, "0013_approvals")
    assert migrate.state(runtime.db).status is migrate.SchemaStatus.CURRENT
    assert _opened(runtime) == EXPECTED


def test_a_server_or_worker_with_another_secret_key_refuses_to_start(
    runtime: Runtime, database_url: str, tmp_path: Path
) -> None:
    """A second worker host without the cluster's QUELL_SECRET_KEY generated a key of its own,
    said it had started, and failed every run that needed a secret (a walkthrough's). It now
    refuses to start, before and after a rotation; so do serve and worker with a plugin that
    does not import, before they say they serve."""
    _store_secrets(runtime)
    runtime.preflight()  # its own key opens everything
    other = SecretValue("another-secret-key-of-at-least-32-characters")
    stranger = SecretBox(other, KeyRing(other, runtime.db, runtime.clock))
    with pytest.raises(ConfigurationError, match="sealed under another secret key"):
        stranger.check_key()
    env = {
        "QUELL_DATA_DIR": str(tmp_path / "elsewhere"),  # a host with a key of its own
        "QUELL_DATABASE_URL": database_url,
    }
    for command in (["worker"], ["serve", "--port", "0"]):
        refused = run_quell(*command, env=env, timeout=30)
        assert refused.returncode == 1, refused.stderr
        assert "error: this database's secrets were sealed under another secret key" in (
            refused.stderr
        )
        assert "serving on" not in refused.stderr
    rotate(runtime.secret_box, runtime.db, runtime.audit, actor="test")
    runtime.preflight()
    with pytest.raises(ConfigurationError, match="does not unwrap under this secret key"):
        SecretBox(other, KeyRing(other, runtime.db, runtime.clock)).check_key()
    unplugged = run_quell(
        "serve", "--port", "0", env={**env, "QUELL_DATA_DIR": str(tmp_path / "data"),
                                     "QUELL_PLUGINS": "nosuchmodule"}, timeout=30,
    )  # fmt: skip
    assert unplugged.returncode == 1, unplugged.stderr
    assert "error: QUELL_PLUGINS names 'nosuchmodule'" in unplugged.stderr
    assert "serving on" not in unplugged.stderr
    assert "Traceback" not in unplugged.stderr
