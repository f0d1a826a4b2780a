"""The error tree."""

from __future__ import annotations

from quell.errors import ErrorCode, InvalidInput, QuellError, UpstreamUnavailable
from quell.ingest.imap import ImapUnavailable
from quell.ingest.siem import SiemError
from quell.sdk.secret import SecretValue


def _subclasses(cls: type[QuellError]) -> list[type[QuellError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def test_each_error_class_of_the_tree_has_its_own_stable_code() -> None:
    # The tree in quell.errors; subclasses elsewhere refine a branch and share its code.
    classes = [
        cls for cls in [QuellError, *_subclasses(QuellError)] if cls.__module__ == "quell.errors"
    ]
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
    assert set(codes) == set(ErrorCode)


def test_peers_failing_are_upstream_errors_and_every_class_has_an_enum_code() -> None:
    assert issubclass(SiemError, UpstreamUnavailable)
    assert issubclass(ImapUnavailable, UpstreamUnavailable)
    assert SiemError("x").code is ErrorCode.UPSTREAM_UNAVAILABLE
    for cls in _subclasses(QuellError):
        assert isinstance(cls.code, ErrorCode), cls


def test_codes_are_lowercase_snake_strings() -> None:
    for code in ErrorCode:
        assert code.value == code.value.lower()
        assert " " not in code.value


def test_error_keeps_message_and_structured_details_with_secrets_redacted() -> None:
    error = InvalidInput("bad port", field="api_port", value=70000, key=SecretValue("k-123"))
    assert str(error) == "bad port"
    assert error.to_dict() == {
        "code": "invalid_input",
        "message": "bad port",
        "details": {"field": "api_port", "value": 70000, "key": "**********"},
    }
    assert "k-123" not in repr(error)
