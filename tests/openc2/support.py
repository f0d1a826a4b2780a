"""What the OpenC2 tests share: the corpus files as test parameters, the corpus's JSON schemas
(for cross-checks only; Quell never reads them), and a fake ``nft`` to drive the nftables
connector without root."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures.requirements import corpus_path

MEDIA_TYPE = "application/openc2+json;version=1.0"
FAKE_NFT = Path(__file__).with_name("fake_nft.py")
PROFILES = ("language", "slpf")


def openc2_corpus() -> Path:
    """The OpenC2 folder of the shared corpus."""
    return corpus_path() / "openc2"


def corpus_params(kind: str) -> list[Any]:
    """One parameter per corpus file under ``tests/*/<kind>`` (e.g. ``good-commands``), with
    its id ``<profile>/<file>``; all need the corpus. When the folder holds none, one
    parameter that fails (rather than an empty, silently skipped set)."""
    params = [
        pytest.param(path, id=f"{path.parent.parent.name}/{path.name}",
                     marks=pytest.mark.requires("corpus"))
        for profile in PROFILES
        for path in sorted((openc2_corpus() / "tests" / profile / kind).glob("*.json"))
    ]  # fmt: skip
    if not params:
        params.append(pytest.param(None, id=f"no-{kind}", marks=pytest.mark.requires("corpus")))
    return params


def corpus_file(path: Path | None) -> Path:
    """The parameter's file; fails the test when the corpus folder had none."""
    if path is None:
        pytest.fail(f"no OpenC2 corpus files under {openc2_corpus() / 'tests'}")
    return path


@cache
def schema(name: str) -> dict[str, Any]:
    """A corpus schema: ``oc2ls`` (language only) or ``oc2slpf`` (language and SLPF)."""
    loaded: dict[str, Any] = json.loads(
        (openc2_corpus() / "schemas" / f"{name}-v1.0.1_gen.json").read_text()
    )
    return loaded


def schema_accepts(name: str, definition: str, body: bytes) -> bool:
    """Whether the corpus schema ``name`` accepts ``body`` as its ``definition``
    (``OpenC2-Command`` or ``OpenC2-Response``); a body that is not JSON is refused."""
    import jsonschema

    try:
        document = json.loads(body)
    except ValueError:
        return False
    validator_class = jsonschema.Draft7Validator
    validator = validator_class(
        {**schema(name), "$ref": f"#/definitions/{definition}"},
        format_checker=validator_class.FORMAT_CHECKER,
    )
    return validator.is_valid(document)


@dataclass(frozen=True)
class FakeNft:
    """A fake nft keeping its table in ``state``; ``command`` is the nftables config."""

    state: Path

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(FAKE_NFT), str(self.state)]

    def read(self) -> dict[str, Any]:
        if not self.state.exists():
            return {"table": False, "rules": [], "sets": {}, "calls": []}
        data: dict[str, Any] = json.loads(self.state.read_text())
        return data

    def rules(self) -> list[dict[str, Any]]:
        """The rules in the table: handle, chain, body (nft syntax) and comment."""
        rules: list[dict[str, Any]] = self.read()["rules"]
        return rules

    def scripts(self) -> list[str]:
        """Every script nft was given (``nft -f -``), in order."""
        return [call["stdin"] for call in self.read()["calls"] if call["stdin"] is not None]


def send(
    client: httpx.Client,
    command: Any,
    *,
    content_type: str = MEDIA_TYPE,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """POST one OpenC2 command (JSON data, or raw bytes as they are) to the consumer."""
    body = command if isinstance(command, bytes) else orjson.dumps(command)
    return client.post(
        "/api/openc2", content=body, headers={"Content-Type": content_type}, params=params
    )
