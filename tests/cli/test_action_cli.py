"""``quell action run`` by hand: its errors name the action once."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Invoke


def test_a_refused_input_names_the_action_once(invoke: Invoke, tmp_path: Path) -> None:
    env = {"QUELL_DATA_DIR": str(tmp_path / "data")}
    refused = invoke("action", "run", "core.echo", "--input", '{"zz": 1}', env=env)
    assert refused.exit_code == 1
    assert "error: core.echo: input zz: Extra inputs are not permitted\n" in refused.stderr
    unconfigured = invoke("action", "run", "nftables.list_rules", env=env)
    assert unconfigured.exit_code == 1
    assert "error: nftables.list_rules: connector 'nftables' acts on this host" in (
        unconfigured.stderr
    )


def test_describe_shows_the_settings_as_the_readme_says(invoke: Invoke, tmp_path: Path) -> None:
    """``quell connector describe`` printed secrets and actions; its settings were only in
    ``--json``."""
    env = {"QUELL_DATA_DIR": str(tmp_path / "data")}
    shown = invoke("connector", "describe", "nftables", env=env)
    assert shown.exit_code == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line}
    assert rows["SETTING"] == ["TYPE", "DEFAULT", "DESCRIPTION"]
    assert rows["hook"][:2] == ["input|forward|output", "'input'"]
    assert rows["table"] == ["string", "'quell'"]
    assert rows["timeout"][:3] == ["number", "10.0", "Seconds"]
