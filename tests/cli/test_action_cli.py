"""``quell action run`` by hand: its errors name the action once."""

from __future__ import annotations

import json
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


def test_a_dry_run_fails_a_write_that_could_not_run_for_real(
    invoke: Invoke, tmp_path: Path
) -> None:
    """A dry run simulated a write whose connector has no instance to run against, so it
    passed where the real run fails with connector_config."""
    env = {"QUELL_DATA_DIR": str(tmp_path / "data")}
    playbook = tmp_path / "deny.yaml"
    playbook.write_text(
        "id: deny\nname: Deny\ninputs: {ip: {type: string, required: true}}\nsteps:\n"
        "  - {id: block, action: nftables.deny, with: {ipv4_net: '{{ ip }}'}}\n",
        encoding="utf-8",
    )
    args = ("playbook", "run", str(playbook), "--input", '{"ip": "203.0.113.7"}', "--wait")
    done = invoke(*args, "--dry-run", "--json", env=env)
    view = json.loads(done.stdout)
    assert view["status"] == "failed", view
    (step,) = view["steps"]
    assert (step["status"], step["error"]["code"]) == ("failed", "connector_config")
    assert "acts on this host" in step["error"]["message"]
