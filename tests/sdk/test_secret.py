"""A SecretValue never shows its value, wherever it goes."""

from __future__ import annotations

import copy
import io
import json
import pickle

import pytest
import structlog
from pydantic import BaseModel

from quell import codec
from quell.errors import QuellError
from quell.logs import configure_logging
from quell.sdk.secret import REDACTED, SecretValue, redact
from quell.settings import LogFormat

CANARY = "canary-9f8e7d6c"


def test_repr_str_and_formatting_redact() -> None:
    secret = SecretValue(CANARY)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret:>20}", "%s" % secret):  # noqa: UP031
        assert CANARY not in shown
    assert secret.reveal() == CANARY


def test_json_of_every_kind_redacts() -> None:
    secret = SecretValue(CANARY)
    assert CANARY not in codec.dumps_str({"nested": [{"key": secret}]})

    class Model(BaseModel):
        key: SecretValue

    model = Model.model_validate({"key": CANARY})
    assert model.key.reveal() == CANARY
    assert CANARY not in model.model_dump_json()
    assert model.model_dump(mode="json") == {"key": REDACTED}
    assert CANARY not in repr(model)
    with pytest.raises(TypeError):
        json.dumps({"key": secret})


def test_errors_and_logs_redact() -> None:
    secret = SecretValue(CANARY)
    error = QuellError("connector refused", password=secret)
    assert CANARY not in str(error.to_dict())
    for log_format in LogFormat:
        stream = io.StringIO()
        configure_logging(log_format, stream=stream)
        structlog.get_logger("test").warning("login_failed", password=secret, nested={"k": secret})
        assert "login_failed" in stream.getvalue()
        assert CANARY not in stream.getvalue()


def test_cannot_be_pickled_but_copies_are_the_same_value() -> None:
    secret = SecretValue(CANARY)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)
    assert copy.deepcopy({"k": secret})["k"] is secret


def test_is_immutable_and_compares_by_value() -> None:
    secret = SecretValue(CANARY)
    with pytest.raises(AttributeError):
        secret._value = "other"  # type: ignore[misc]
    assert secret == SecretValue(CANARY)
    assert secret != SecretValue("other")
    assert SecretValue(secret).reveal() == CANARY


def test_redact_walks_containers() -> None:
    secret = SecretValue(CANARY)
    assert redact({"a": [secret, (1, secret)], "b": "plain"}) == {
        "a": [REDACTED, [1, REDACTED]],
        "b": "plain",
    }
