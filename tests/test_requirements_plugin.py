"""The test plugin: missing peers are skipped with a summary, or fail under QUELL_REQUIRE_ALL."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TEST_FILE = """
import pytest

@pytest.mark.requires("corpus")
def test_needs_corpus():
    pass

def test_plain():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("QUELL_CORPUS", str(pytester.path / "no-such-corpus"))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    pytester.makeconftest('pytest_plugins = ["tests.fixtures.requirements"]')
    pytester.makeini("[pytest]\nmarkers =\n    requires(name): needs a peer\n")
    pytester.makepyfile(test_sample=TEST_FILE)
    return pytester


def test_missing_requirement_is_skipped_and_summarized(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUELL_REQUIRE_ALL", raising=False)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*quell: peers and backends*", "skipped groups:", "*1  needs corpus: the shared corpus*"]
    )


def test_require_all_turns_the_skip_into_a_failure(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUELL_REQUIRE_ALL", "1")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*needs corpus: the shared corpus*QUELL_REQUIRE_ALL=1*"])


def test_unknown_requirement_names_are_refused(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(
        test_other="""
import pytest

@pytest.mark.requires("quantum-computer")
def test_x():
    pass
"""
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*unknown requirement 'quantum-computer'*"])
