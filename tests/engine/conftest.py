"""Every engine test starts with a fresh test peer."""

from __future__ import annotations

import pytest

from tests.engine.peer import Peer


@pytest.fixture(autouse=True)
def _fresh_peer() -> None:
    Peer.reset()
