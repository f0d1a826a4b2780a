"""Secrets sealed at rest."""

from __future__ import annotations

import pytest

from quell.errors import ConfigurationError
from quell.governance.secrets import SecretBox
from quell.sdk.secret import SecretValue

KEY = SecretValue("k" * 43)


def test_seal_and_open_round_trip_without_the_plaintext_in_the_blob() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(SecretValue("hmac-canary-4711"), purpose="source:siem")
    assert b"hmac-canary-4711" not in sealed
    assert box.open(sealed, purpose="source:siem").reveal() == "hmac-canary-4711"
    assert box.seal(SecretValue("same"), purpose="p") != box.seal(SecretValue("same"), purpose="p")


def test_a_value_does_not_open_for_another_purpose_or_when_altered() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(SecretValue("x"), purpose="source:a")
    with pytest.raises(ConfigurationError, match="does not authenticate"):
        box.open(sealed, purpose="source:b")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ConfigurationError, match="does not authenticate"):
        box.open(tampered, purpose="source:a")


def test_another_key_is_named_as_the_problem() -> None:
    sealed = SecretBox(KEY).seal(SecretValue("x"), purpose="p")
    with pytest.raises(ConfigurationError, match="another secret key"):
        SecretBox(SecretValue("z" * 43)).open(sealed, purpose="p")
    with pytest.raises(ConfigurationError, match="not a sealed value"):
        SecretBox(KEY).open(b"junk", purpose="p")
