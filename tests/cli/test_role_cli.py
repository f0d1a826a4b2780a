"""``quell role`` on both backends."""

from __future__ import annotations

from quell.runtime import Runtime
from tests.cli.conftest import Invoke


def test_roles_from_the_command_line(invoke: Invoke, database_url: str, runtime: Runtime) -> None:
    env = {"QUELL_DATABASE_URL": database_url}
    made = invoke("role", "set", "hunter", "alerts:read", "intel:read", "intel:manage", env=env)
    assert made.exit_code == 0, made.stderr
    assert made.stdout == "role hunter: alerts:read intel:manage intel:read\n"
    wrong = invoke("role", "set", "hunter", "alerts:eat", env=env)
    assert (wrong.exit_code, "unknown permission 'alerts:eat'" in wrong.stderr) == (1, True)
    listed = invoke("role", "list", env=env)
    assert "hunter" in listed.stdout
    assert "auditor" in listed.stdout
    added = invoke("user", "add", "hana", "--role", "hunter", env=env)
    assert added.exit_code == 0, added.stderr
    assert runtime.users.get("hana").role == "hunter"
    held = invoke("role", "remove", "hunter", env=env)
    assert (held.exit_code, "held by 1" in held.stderr) == (1, True)
