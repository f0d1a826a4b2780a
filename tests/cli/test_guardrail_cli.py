"""``quell guardrail …`` at the command line, on both backends: what would never apply is
refused, and looking at an asset's tags does not change them."""

from __future__ import annotations

from pathlib import Path

import pytest

from quell.runtime import Runtime
from tests.cli.conftest import Invoke


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url, "QUELL_DATA_DIR": str(tmp_path / "cli-data")}


def test_tags_are_shown_without_tags_and_cleared_only_when_asked(
    invoke: Invoke, env: dict[str, str], runtime: Runtime
) -> None:
    def quell(*args: str) -> tuple[int, str]:
        done = invoke("guardrail", *args, env=env)
        return done.exit_code, done.stdout if done.exit_code == 0 else done.stderr

    assert quell("tag", "db01.corp.example", "crown-jewel", "pci") == (
        0, "db01.corp.example: crown-jewel, pci\n",
    )  # fmt: skip
    # With no tags it shows them (it used to remove them, and with them the protection).
    assert quell("tag", "db01.corp.example") == (0, "db01.corp.example: crown-jewel, pci\n")
    assert runtime.guardrails.policy().asset_tags == {"db01.corp.example": ["crown-jewel", "pci"]}
    code, out = quell("tag", "db01.corp.example", "pci", "--clear")
    assert (code, "give tags, or --clear, not both" in out) == (2, True)
    assert quell("tag", "db01.corp.example", "--clear") == (0, "db01.corp.example: no tags\n")
    assert runtime.guardrails.policy().asset_tags == {}


def test_a_limit_or_protection_that_would_never_apply_is_refused(
    invoke: Invoke, env: dict[str, str], runtime: Runtime
) -> None:
    def quell(*args: str) -> tuple[int, str]:
        done = invoke("guardrail", *args, env=env)
        return done.exit_code, done.stderr

    code, out = quell("limit", "set", "--action", "nftables.dney", "--per-hour", "100")
    said = "error: no action 'nftables.dney' (did you mean 'nftables.deny'?)\n"
    assert (code, out.endswith(said)) == (1, True), out
    code, out = quell("limit", "set", "--action", "nftables.*", "--per-hour", "3")
    assert (code, "is a pattern: name one action exactly" in out) == (1, True)
    code, out = quell("protect", "10.0.0.0/33")
    assert code == 1
    assert "error: '10.0.0.0/33' is not a valid address or network" in out
    assert runtime.guardrails.policy().limits == ()
    assert runtime.guardrails.policy().protected == ()
    assert quell("limit", "set", "--action", "nftables.deny", "--per-hour", "100")[0] == 0
