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
