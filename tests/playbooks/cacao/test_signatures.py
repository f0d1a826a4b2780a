"""CACAO 2.0 JSS signatures: signing, verifying, the TC's worked example, tampering, keys."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

from quell.errors import InvalidInput
from quell.playbooks.cacao.signatures import (
    VALUE_MISMATCH,
    SignatureCheck,
    SigningKey,
    sign_playbook,
    verify_signatures,
)
from tests.fixtures.requirements import corpus_path

NOW = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
PLAYBOOK_ID = "playbook--a0777575-5c4c-4710-9f01-15776103837f"
MODIFIED = "2024-02-01T10:00:00.000Z"
ACTION = "action--7f40f9d7-de39-4027-ab97-15035beff2ff"
ED25519_KEY = (
    ed25519.Ed25519PrivateKey.generate()
)  # module level: hypothesis tests take no fixtures

# The CACAO TC's worked example (oasis-tcs/cacao, Examples/CACAO-2.0/signature-example-rsa.md):
# its playbook, its RS256 public key and the signature value it publishes.
TC_PUBLIC_KEY = (
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAptKZyFPStvmOlb0WihOBhlHUr6wFDHC+tW7hJAudfTQ5mHZQ"
    "pB8PoMz07udZA+dG8dhUIPkmXlp1TgREeYTHdhxhuf0y/GhbpZv5JPYHx3watO+HWO2qYkjRMEcrWhPMdaVkS/Xe/lia"
    "Mcow4jYoWaFm8VobeYsyVD2bWWdyl4joTEETm1Z47RnnfR15kVhVudVrDzEFmM4nXV/6dmIg184RJE4httwBFxR8qZCQ"
    "CwTiJmsoyJxfUR0Gs4ePKc5sB0NTkmFZc5klQSitd67RJn2ldhbqE7EpDl4XlIt+UyLJm1guCBltia8Agke7dXuhpB7h"
    "Q6LJwY4EjzthkJ8IPwIDAQAB"
)
TC_VALUE = (
    "gXyPW--uUKvGXRh_oDC7IYlx13hGmkiQw6XX3YX_V_i4Y39OPilf0q0qf46aO3IrvG-5_fgeQ3dIunmizYneaVJKjsXo"
    "-gkJczvGDehlTjS7MBUIGyD9DRd41DnaxWWwzU-T4sZCur664_3J0C-WRCDgZxiB_ItFpeSnPJ8rR8GRFO6M9YS-ejEG"
    "Jl-sd_hfZUqjZOE_S_UWp_Fd9QYlP2cWDvGH8vFhx2ek9KovEob5Bh2LX_Gaf7t237B34wKeN4B8aqapyTh3Q8v_Z61b"
    "DTNLyi6ZA8zcrUOgCVLVMx_EFizx31WIDZrePsSpX4bfRurcvRyvNNVdWLaS96JYog"
)


def _tc_example() -> dict[str, Any]:
    return {
        "type": "playbook",
        "spec_version": "cacao-2.0",
        "id": PLAYBOOK_ID,
        "name": "Playbook 1",
        "created_by": "identity--5abe695c-7bd5-4c31-8824-2528696cdbf1",
        "created": "2022-05-18T11:31:31.319Z",
        "modified": "2022-05-18T11:31:31.319Z",
        "signatures": [
            {
                "type": "jss",
                "id": "jss--af892292-c4b4-47eb-9be6-4897ff4b9388",
                "created_by": "identity--5abe695c-7bd5-4c31-8824-2528696cdbf1",
                "created": "2023-01-10T17:39:31.319Z",
                "modified": "2023-01-10T17:39:31.319Z",
                "signee": "ACME Cyber Company",
                "valid_from": "2023-01-10T17:39:31.319Z",
                "valid_until": "2023-06-10T17:39:31.319Z",
                "related_to": PLAYBOOK_ID,
                "related_version": "2022-05-18T11:31:31.319Z",
                "hash_algorithm": "sha-256",
                "algorithm": "RS256",
                "public_key": TC_PUBLIC_KEY,
                "value": TC_VALUE,
            }
        ],
    }


def _small_playbook() -> dict[str, Any]:
    return {
        "type": "playbook",
        "spec_version": "cacao-2.0",
        "id": PLAYBOOK_ID,
        "name": "Contain host",
        "created": MODIFIED,
        "modified": MODIFIED,
        "priority": 3,
        "workflow_start": "start--07bea005-4a36-4a77-bd1f-79a6e4682a13",
        "workflow": {
            "start--07bea005-4a36-4a77-bd1f-79a6e4682a13": {"type": "start"},
        },
    }


def _corpus_playbook() -> dict[str, Any]:
    path = corpus_path() / "cacao" / "playbooks" / "spec-3.1-example.json"
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _pem(key: PrivateKeyTypes, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _spki_b64(key: PrivateKeyTypes) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def private_keys() -> dict[str, PrivateKeyTypes]:
    """One key for each algorithm; generated once, RSA being slow."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        **dict.fromkeys(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"], rsa_key),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
        "Ed25519": ED25519_KEY,
        "Ed448": ed448.Ed448PrivateKey.generate(),
    }


@pytest.fixture
def keys(private_keys: dict[str, PrivateKeyTypes]) -> Callable[..., SigningKey]:
    def make(algorithm: str, signee: str = "ACME Cyber Company") -> SigningKey:
        return SigningKey(_pem(private_keys[algorithm]), algorithm, signee)

    return make


# --- signing and verifying ----------------------------------------------------------------


@pytest.mark.requires("corpus")
@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "Ed25519"])
def test_a_signed_corpus_playbook_verifies(keys: Callable[..., SigningKey], algorithm: str) -> None:
    playbook = _corpus_playbook()
    original = copy.deepcopy(playbook)
    signed = sign_playbook(playbook, keys(algorithm), now=NOW)
    signature = signed["signatures"][0]
    assert verify_signatures(signed, now=NOW) == [
        SignatureCheck(
            signature["id"], "ACME Cyber Company", algorithm, valid=True, reason="verified"
        )
    ]
    assert playbook == original  # the input is left alone
    assert {k: v for k, v in signed.items() if k != "signatures"} == original
    assert signed["modified"] == "2023-02-19T08:00:24.918Z"  # signing is not a new version


@pytest.mark.requires("corpus")
def test_the_signature_object_matches_the_cacao_schema(keys: Callable[..., SigningKey]) -> None:
    key = SigningKey(
        keys("ES256").private_key_pem,
        "ES256",
        "ACME Cyber Company",
        created_by="identity--5abe695c-7bd5-4c31-8824-2528696cdbf1",
    )
    signature = sign_playbook(_corpus_playbook(), key, now=NOW)["signatures"][0]
    schemas = corpus_path() / "cacao" / "schemas" / "schemas" / "data-types"
    resources = []
    for name in ("signature", "identifier", "timestamp"):
        contents = json.loads((schemas / f"{name}.json").read_text(encoding="utf-8"))
        resources.append((contents["$id"], DRAFT7.create_resource(contents)))
    validator = Draft7Validator(
        json.loads((schemas / "signature.json").read_text(encoding="utf-8")),
        registry=Registry().with_resources(resources),
    )
    assert list(validator.iter_errors(signature)) == []
    assert re.fullmatch(
        r"jss--[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        signature["id"],
    )
    assert signature["created"] == signature["modified"] == "2024-03-01T12:00:00.123Z"
    assert signature["created_by"] == "identity--5abe695c-7bd5-4c31-8824-2528696cdbf1"
    assert signature["related_to"] == "playbook--61a6c41e-6efc-4516-a242-dfbc5c89d562"
    assert signature["related_version"] == "2023-02-19T08:00:24.918Z"
    assert (signature["hash_algorithm"], signature["algorithm"]) == ("sha-256", "ES256")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", signature["value"])
    assert "-----BEGIN" not in signature["public_key"]  # the spec's form: the PEM body only


def test_the_cacao_tc_worked_example_verifies() -> None:
    # Replays the TC's RS256 example byte for byte: sha-256 of the JCS form as lowercase hex,
    # then RS256 over that hex string.
    checks = verify_signatures(_tc_example(), now=datetime(2023, 3, 1, tzinfo=UTC))
    assert [c.as_dict() for c in checks] == [
        {
            "id": "jss--af892292-c4b4-47eb-9be6-4897ff4b9388",
            "signee": "ACME Cyber Company",
            "algorithm": "RS256",
            "valid": True,
            "reason": "verified",
        }
    ]
    unsigned = _tc_example()
    del unsigned["signatures"][0]["value"]
    assert (
        hashlib.sha256(rfc8785.dumps(unsigned)).hexdigest()
        == "973bb6492184e4681b1eab9df1f56926fc1a91582e3529bfd0bfb231e1c51b0a"
    )


def test_the_tc_example_expires_and_breaks_when_edited() -> None:
    later = datetime(2023, 6, 10, 17, 39, 31, 319000, tzinfo=UTC)  # exactly valid_until
    assert verify_signatures(_tc_example(), now=later)[0].reason == "expired"
    edited = _tc_example()
    edited["name"] = "Playbook 2"
    assert verify_signatures(edited, now=datetime(2023, 3, 1, tzinfo=UTC))[0].reason == (
        VALUE_MISMATCH
    )


@pytest.mark.parametrize(
    ("algorithm", "hash_algorithm"),
    [
        ("RS256", "sha-256"),
        ("RS384", "sha-384"),
        ("RS512", "sha-512"),
        ("PS256", "sha-256"),
        ("PS384", "sha3-384"),
        ("PS512", "sha-512"),
        ("ES256", "sha3-256"),
        ("ES384", "sha-384"),
        ("ES512", "sha3-512"),
        ("Ed25519", "sha-512"),
        ("Ed448", "sha-256"),
    ],
)
def test_every_algorithm_and_hash_round_trips(
    keys: Callable[..., SigningKey], algorithm: str, hash_algorithm: str
) -> None:
    signed = sign_playbook(
        _small_playbook(), keys(algorithm), now=NOW, hash_algorithm=hash_algorithm
    )
    assert signed["signatures"][0]["hash_algorithm"] == hash_algorithm
    assert [c.reason for c in verify_signatures(signed, now=NOW)] == ["verified"]


@pytest.mark.parametrize(("algorithm", "size"), [("ES256", 64), ("ES384", 96), ("ES512", 132)])
def test_ecdsa_values_are_jws_r_s_not_der(
    keys: Callable[..., SigningKey],
    private_keys: dict[str, PrivateKeyTypes],
    algorithm: str,
    size: int,
) -> None:
    signed = sign_playbook(_small_playbook(), keys(algorithm), now=NOW)
    signature = signed["signatures"][0]
    raw = _b64url_decode(signature["value"])
    assert len(raw) == size
    # An independent check of the procedure: hex(sha-256(JCS)), ECDSA over it, r || s.
    unsigned = {k: v for k, v in signature.items() if k != "value"}
    signed_bytes = hashlib.sha256(rfc8785.dumps({**signed, "signatures": [unsigned]})).hexdigest()
    der = encode_dss_signature(
        int.from_bytes(raw[: size // 2], "big"), int.from_bytes(raw[size // 2 :], "big")
    )
    public = private_keys[algorithm].public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}
    public.verify(der, signed_bytes.encode(), ec.ECDSA(digest[algorithm]))


def test_an_empty_signatures_list_and_none_give_no_results() -> None:
    assert verify_signatures(_small_playbook()) == []
    assert verify_signatures({**_small_playbook(), "signatures": []}) == []


# --- tampering --------------------------------------------------------------------------------


def _rename(p: dict[str, Any]) -> None:
    p["name"] = "Find Malware FuzzyPanda (edited)"


def _edit_command(p: dict[str, Any]) -> None:
    p["workflow"][ACTION]["commands"][0]["command"] = "rm -rf /"


def _move_start(p: dict[str, Any]) -> None:
    p["workflow_start"] = ACTION


def _add_property(p: dict[str, Any]) -> None:
    p["x_acme_note"] = "harmless?"


def _drop_property(p: dict[str, Any]) -> None:
    del p["description"]


def _change_signee(p: dict[str, Any]) -> None:
    p["signatures"][0]["signee"] = "Someone Else"


def _add_to_signature(p: dict[str, Any]) -> None:
    p["signatures"][0]["valid_from"] = "2020-01-01T00:00:00.000Z"


@pytest.mark.requires("corpus")
@pytest.mark.parametrize(
    "tamper",
    [
        _rename,
        _edit_command,
        _move_start,
        _add_property,
        _drop_property,
        _change_signee,
        _add_to_signature,
    ],
)
def test_any_change_after_signing_fails(
    keys: Callable[..., SigningKey], tamper: Callable[[dict[str, Any]], None]
) -> None:
    signed = sign_playbook(_corpus_playbook(), keys("ES256"), now=NOW)
    tamper(signed)
    [check] = verify_signatures(signed, now=NOW)
    assert (check.valid, check.reason) == (False, "value does not match the playbook")


# --- JCS --------------------------------------------------------------------------------------


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed_keys(v) for k, v in reversed(value.items())}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


@pytest.mark.requires("corpus")
def test_key_order_and_whitespace_do_not_matter(keys: Callable[..., SigningKey]) -> None:
    signed = sign_playbook(_corpus_playbook(), keys("Ed25519"), now=NOW)
    for text in (
        json.dumps(_reversed_keys(signed), indent=7),
        json.dumps(signed, separators=(",", ":"), sort_keys=True),
        json.dumps(_reversed_keys(signed), indent="\t", ensure_ascii=False),
    ):
        assert verify_signatures(json.loads(text), now=NOW)[0].reason == "verified"


def test_numbers_are_canonicalized_as_rfc8785_says(keys: Callable[..., SigningKey]) -> None:
    playbook = {**_small_playbook(), "priority": 3, "x_ratio": 100}
    signed = sign_playbook(playbook, keys("Ed25519"), now=NOW)
    assert rfc8785.dumps({"a": 3.0, "b": 1e2}) == b'{"a":3,"b":100}'
    same = json.loads(json.dumps(signed).replace('"priority": 3', '"priority": 3.0'))
    same = json.loads(json.dumps(same).replace('"x_ratio": 100', '"x_ratio": 1e2'))
    assert (same["priority"], same["x_ratio"]) == (3.0, 100.0)
    assert verify_signatures(same, now=NOW)[0].reason == "verified"
    signed["priority"] = 4
    assert verify_signatures(signed, now=NOW)[0].reason == VALUE_MISMATCH


# --- several signatures -----------------------------------------------------------------------


def test_two_signatures_both_verify_in_any_order(keys: Callable[..., SigningKey]) -> None:
    once = sign_playbook(_small_playbook(), keys("RS256", "ACME"), now=NOW)
    twice = sign_playbook(once, keys("ES256", "Partner CERT"), now=NOW + timedelta(days=1))
    first, second = twice["signatures"]
    assert first == once["signatures"][0]  # the existing signature is kept as it was
    assert [(c.signee, c.algorithm, c.reason) for c in verify_signatures(twice, now=NOW)] == [
        ("ACME", "RS256", "verified"),
        ("Partner CERT", "ES256", "verified"),
    ]
    swapped = {**twice, "signatures": [second, first]}
    assert [c.valid for c in verify_signatures(swapped, now=NOW)] == [True, True]
    alone = {**twice, "signatures": [second]}
    assert [c.valid for c in verify_signatures(alone, now=NOW)] == [True]


def test_a_countersignature_is_not_part_of_what_the_signature_signs(
    keys: Callable[..., SigningKey],
) -> None:
    signed = sign_playbook(_small_playbook(), keys("Ed25519"), now=NOW)
    signed["signatures"][0]["signature"] = {"type": "jss", "signee": "Counter Signer"}
    assert verify_signatures(signed, now=NOW)[0].reason == "verified"


# --- failures, each with its reason -----------------------------------------------------------


def _signed(keys: Callable[..., SigningKey]) -> dict[str, Any]:
    return sign_playbook(_small_playbook(), keys("Ed25519"), now=NOW)


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(signature: dict[str, Any]) -> None:
        signature[field] = value

    return change


def _drop(*fields: str) -> Callable[[dict[str, Any]], None]:
    def change(signature: dict[str, Any]) -> None:
        for name in fields:
            del signature[name]

    return change


OTHER_PLAYBOOK = "playbook--00000000-0000-4000-8000-000000000000"
NOT_A_KEY = "public_key is not a base64 DER or PEM public key"
NOT_A_CERTIFICATE = "public_cert_chain[0] is not a base64 DER or PEM certificate"
NEEDS_RSA = "algorithm RS256 needs an RSA key of at least 2048 bits"
WRONG_BYTES = base64.urlsafe_b64encode(b"x" * 64).decode().rstrip("=")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_set("related_to", OTHER_PLAYBOOK), "related_to names another playbook"),
        (
            _set("related_version", "2020-01-01T00:00:00.000Z"),
            "related_version is not the playbook's modified (another version was signed)",
        ),
        (_set("revoked", True), "revoked"),
        (_set("revoked", "yes"), "revoked is not a boolean"),
        (_set("valid_until", "2024-03-01T12:00:00.000Z"), "expired"),
        (_set("valid_until", "next week"), "valid_until is not a CACAO timestamp"),
        (
            _set("valid_from", "2024-03-02T00:00:00.000Z"),
            "not yet valid (valid_from is in the future)",
        ),
        (_set("algorithm", "HS256"), "unsupported algorithm HS256"),
        (_set("algorithm", "RS256"), f"{NEEDS_RSA}, but the key is an Ed25519 key"),
        (_set("hash_algorithm", "md5"), "unsupported hash_algorithm md5"),
        (_set("hash_algorithm", "SHA-256"), "unsupported hash_algorithm SHA-256"),
        (_drop("public_key"), "no public_key"),
        (_set("public_key", "not a key"), NOT_A_KEY),
        (_set("public_key", 42), NOT_A_KEY),
        (_set("public_cert_chain", ["AAAA"]), NOT_A_CERTIFICATE),
        (_set("public_cert_chain", []), NOT_A_CERTIFICATE),
        (_set("value", "not base64url!"), "value is not base64url"),
        (_set("value", "a+b/c="), "value is not base64url"),
        (_set("value", WRONG_BYTES), VALUE_MISMATCH),
        (_set("value", 7), "value is not a string"),
        (_drop("value"), "missing value"),
        (_drop("signee"), "missing signee"),
        (_set("type", "signature"), "type is not jss"),
    ],
)
def test_a_broken_signature_names_its_problem(
    keys: Callable[..., SigningKey], change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    signed = _signed(keys)
    change(signed["signatures"][0])
    [check] = verify_signatures(signed, now=NOW)
    assert (check.valid, check.reason) == (False, reason)


@pytest.mark.parametrize("field", ["cert_url", "thumbprint"])
def test_a_key_that_is_not_embedded_is_not_fetched(
    keys: Callable[..., SigningKey], field: str
) -> None:
    signed = _signed(keys)
    signature = signed["signatures"][0]
    del signature["public_key"]
    signature[field] = "https://example.com/acme.pem" if field == "cert_url" else "AbC"
    assert verify_signatures(signed, now=NOW)[0].reason == (
        "the public key is not embedded (only cert_url or thumbprint); it is not fetched"
    )


def test_a_signature_of_another_playbook_does_not_transfer(
    keys: Callable[..., SigningKey],
) -> None:
    signature = _signed(keys)["signatures"][0]
    other = {**_small_playbook(), "id": "playbook--11111111-1111-4111-8111-111111111111"}
    assert verify_signatures({**other, "signatures": [signature]}, now=NOW)[0].reason == (
        "related_to names another playbook"
    )
    newer = {**_small_playbook(), "modified": "2024-02-02T10:00:00.000Z"}
    assert not verify_signatures({**newer, "signatures": [signature]}, now=NOW)[0].valid


def test_a_non_canonical_base64url_value_is_refused(keys: Callable[..., SigningKey]) -> None:
    # An Ed25519 value is 86 characters; the last carries 4 unused bits. Setting one of them
    # would decode to the same bytes: accepted, it would make the value malleable.
    signed = _signed(keys)
    value = signed["signatures"][0]["value"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = value[:-1] + alphabet[alphabet.index(value[-1]) ^ 1]
    assert _b64url_decode(twin) == _b64url_decode(value)
    signed["signatures"][0]["value"] = twin
    assert verify_signatures(signed, now=NOW)[0].reason == "value is not base64url"


def test_malformed_input_never_raises(keys: Callable[..., SigningKey]) -> None:
    signed = _signed(keys)
    assert verify_signatures({**signed, "signatures": "jss"}) == [
        SignatureCheck(None, None, None, valid=False, reason="signatures is not a list")
    ]
    assert (
        verify_signatures({**signed, "signatures": ["jss", None]})
        == [SignatureCheck(None, None, None, valid=False, reason="not a JSON object")] * 2
    )
    not_json = {**signed, "x_value": float("nan")}
    assert verify_signatures(not_json, now=NOW)[0].reason == (
        "the playbook cannot be canonicalized (JCS): nan is not representable in JCS"
    )
    bare = verify_signatures({"signatures": [{"type": "jss", "id": 5}]})
    assert (bare[0].id, bare[0].reason) == (None, "id is not a string")


# --- key forms --------------------------------------------------------------------------------


def _sign_by_hand(playbook: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    """The spec's steps, written out independently of the module, with ED25519_KEY."""
    canonical = rfc8785.dumps({**playbook, "signatures": [signature]})
    value = ED25519_KEY.sign(hashlib.sha256(canonical).hexdigest().encode())
    done = {**signature, "value": base64.urlsafe_b64encode(value).decode().rstrip("=")}
    return {**playbook, "signatures": [done]}


def _hand_signature(**key_fields: Any) -> dict[str, Any]:
    return {
        "type": "jss",
        "id": "jss--af892292-c4b4-47eb-9be6-4897ff4b9388",
        "created": "2024-02-01T10:00:00.000Z",
        "modified": "2024-02-01T10:00:00.000Z",
        "signee": "ACME Cyber Company",
        "related_to": PLAYBOOK_ID,
        "related_version": MODIFIED,
        "hash_algorithm": "sha-256",
        "algorithm": "Ed25519",
        **key_fields,
    }


def _certificate(key: ed25519.Ed25519PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME playbook signing")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .sign(key, None)
    )


def test_public_key_as_a_full_pem_block_verifies() -> None:
    pem = ED25519_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = _sign_by_hand(_small_playbook(), _hand_signature(public_key=pem.decode()))
    assert verify_signatures(signed, now=NOW)[0].reason == "verified"


def test_public_cert_chain_in_base64_der_or_pem_verifies() -> None:
    certificate = _certificate(ED25519_KEY)
    der = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    for chain in ([der], [pem], [der, der]):
        signed = _sign_by_hand(_small_playbook(), _hand_signature(public_cert_chain=chain))
        assert verify_signatures(signed, now=NOW)[0].reason == "verified"
    other = ed25519.Ed25519PrivateKey.generate()
    both = _hand_signature(public_key=_spki_b64(other), public_cert_chain=[der])
    assert verify_signatures(_sign_by_hand(_small_playbook(), both), now=NOW)[0].reason == (
        "public_key does not match the key of public_cert_chain[0]"
    )


def test_a_short_rsa_key_is_refused_for_verification() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
    signature = _hand_signature(public_key=_spki_b64(weak), algorithm="RS256")
    signed = _sign_by_hand(_small_playbook(), signature)
    assert verify_signatures(signed, now=NOW)[0].reason == (
        "algorithm RS256 needs an RSA key of at least 2048 bits, but the key is an RSA 1024-bit key"
    )


# --- signing keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "algorithm"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
    ],
)
def test_from_file_infers_the_algorithm(
    tmp_path: Path, make: Callable[[], PrivateKeyTypes], algorithm: str
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(_pem(make()))
    key = SigningKey.from_file(path, signee="ACME")
    assert (key.algorithm, key.signee, key.created_by) == (algorithm, "ACME", None)
    signed = sign_playbook(_small_playbook(), key, now=NOW)
    assert verify_signatures(signed, now=NOW)[0].reason == "verified"


def test_from_file_reads_an_encrypted_key_with_its_password(
    tmp_path: Path, private_keys: dict[str, PrivateKeyTypes]
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(_pem(private_keys["ES256"], password=b"correct horse"))
    key = SigningKey.from_file(path, signee="ACME", password=b"correct horse")
    assert key.algorithm == "ES256"
    signed = sign_playbook(_small_playbook(), key, now=NOW)
    assert verify_signatures(signed, now=NOW)[0].reason == "verified"
    with pytest.raises(InvalidInput) as wrong:
        SigningKey.from_file(path, signee="ACME", password=b"wrong")
    assert wrong.value.message == (
        f"{path}: cannot load the private key: not a PEM private key, or the password is wrong"
    )
    with pytest.raises(InvalidInput) as missing:
        SigningKey.from_file(path, signee="ACME")
    assert missing.value.message == f"{path}: the private key is encrypted: give its password"


@pytest.mark.parametrize(
    ("key_name", "algorithm", "message"),
    [
        (
            "RS256",
            "ES256",
            "algorithm ES256 needs an EC P-256 key, but the key is an RSA 2048-bit key",
        ),
        (
            "ES256",
            "ES384",
            "algorithm ES384 needs an EC P-384 key, but the key is an EC secp256r1 key",
        ),
        ("ES256", "RS256", f"{NEEDS_RSA}, but the key is an EC secp256r1 key"),
        ("Ed25519", "Ed448", "algorithm Ed448 needs an Ed448 key, but the key is an Ed25519 key"),
    ],
)
def test_from_file_refuses_an_algorithm_the_key_cannot_do(
    tmp_path: Path,
    private_keys: dict[str, PrivateKeyTypes],
    key_name: str,
    algorithm: str,
    message: str,
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(_pem(private_keys[key_name]))
    with pytest.raises(InvalidInput) as caught:
        SigningKey.from_file(path, algorithm=algorithm, signee="ACME")
    assert caught.value.message == message


def test_from_file_refuses_what_is_not_a_usable_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(InvalidInput, match=r"missing\.pem: cannot read the key file"):
        SigningKey.from_file(missing, signee="ACME")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InvalidInput, match="not a PEM private key"):
        SigningKey.from_file(garbage, signee="ACME")
    weak = tmp_path / "weak.pem"
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
    weak.write_bytes(_pem(short))
    with pytest.raises(InvalidInput, match="at least 2048 bits, but the key is an RSA 1024-bit"):
        SigningKey.from_file(weak, signee="ACME")
    exchange_only = tmp_path / "x25519.pem"
    exchange_only.write_bytes(_pem(x25519.X25519PrivateKey.generate()))
    with pytest.raises(InvalidInput) as caught:
        SigningKey.from_file(exchange_only, signee="ACME")
    assert caught.value.message == (
        f"{exchange_only}: a X25519PublicKey has no JSS signature algorithm"
    )


def test_no_key_material_in_errors_or_repr(
    tmp_path: Path, private_keys: dict[str, PrivateKeyTypes]
) -> None:
    pem = _pem(private_keys["ES256"], password=b"s3cret")
    body = pem.decode().splitlines()[1]
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    with pytest.raises(InvalidInput) as caught:
        SigningKey.from_file(path, signee="ACME", password=b"guess")
    rendered = json.dumps(caught.value.to_dict()) + repr(caught.value) + str(caught.value)
    assert body not in rendered
    assert "guess" not in rendered
    key = SigningKey.from_file(path, signee="ACME", password=b"s3cret")
    assert repr(key) == "SigningKey(algorithm='ES256', signee='ACME', created_by=None)"


def test_signing_key_fields_are_checked(keys: Callable[..., SigningKey]) -> None:
    pem = keys("Ed25519").private_key_pem
    with pytest.raises(InvalidInput, match="unsupported signature algorithm 'HS256'"):
        SigningKey(pem, "HS256", "ACME")
    with pytest.raises(InvalidInput, match="needs a signee"):
        SigningKey(pem, "Ed25519", "  ")
    with pytest.raises(InvalidInput, match="created_by must be a STIX identity id"):
        SigningKey(pem, "Ed25519", "ACME", created_by="ACME Inc")


def test_sign_playbook_refuses_what_it_cannot_sign(keys: Callable[..., SigningKey]) -> None:
    key = keys("Ed25519")
    with pytest.raises(InvalidInput, match="unsupported hash_algorithm 'md5'"):
        sign_playbook(_small_playbook(), key, hash_algorithm="md5")
    with pytest.raises(InvalidInput, match="no id to sign"):
        sign_playbook({**_small_playbook(), "id": None}, key)
    with pytest.raises(InvalidInput, match="no modified timestamp"):
        sign_playbook({**_small_playbook(), "modified": "yesterday"}, key)
    with pytest.raises(InvalidInput, match="signatures is not a list"):
        sign_playbook({**_small_playbook(), "signatures": {}}, key)
    with pytest.raises(InvalidInput, match=r"cannot be canonicalized for signing \(JCS\)"):
        sign_playbook({**_small_playbook(), "x_big": 2**60}, key)
    mismatched = SigningKey(key.private_key_pem, "ES256", "ACME")
    with pytest.raises(InvalidInput, match="needs an EC P-256 key, but the key is an Ed25519"):
        sign_playbook(_small_playbook(), mismatched)


def test_a_naive_now_is_taken_as_utc(keys: Callable[..., SigningKey]) -> None:
    signed = sign_playbook(_small_playbook(), keys("Ed25519"), now=datetime(2024, 3, 1, 8))
    assert signed["signatures"][0]["created"] == "2024-03-01T08:00:00.000Z"
    assert verify_signatures(signed, now=datetime(2024, 3, 1, 8))[0].valid


# --- properties -------------------------------------------------------------------------------

_SAFE_INT = 2**53 - 1
_leaves = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-_SAFE_INT, max_value=_SAFE_INT),
    st.booleans(),
    st.none(),
)
_json = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
_content = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in {"id", "modified", "signatures"}),
    _json,
    max_size=6,
)
_ED25519_SIGNING_KEY = SigningKey(_pem(ED25519_KEY), "Ed25519", "ACME")


def _string_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_leaves(v, (*path, i))


def _playbook(content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "playbook", **content, "id": PLAYBOOK_ID, "modified": MODIFIED}


@settings(max_examples=60, deadline=None)
@given(content=_content)
def test_any_json_content_signs_and_verifies(content: dict[str, Any]) -> None:
    signed = sign_playbook(_playbook(content), _ED25519_SIGNING_KEY, now=NOW)
    assert [c.reason for c in verify_signatures(signed, now=NOW)] == ["verified"]


@settings(max_examples=60, deadline=None)
@given(content=_content, data=st.data())
def test_changing_any_string_leaf_breaks_the_signature(
    content: dict[str, Any], data: st.DataObject
) -> None:
    signed = sign_playbook(_playbook(content), _ED25519_SIGNING_KEY, now=NOW)
    path = data.draw(st.sampled_from(list(_string_leaves(signed))))
    parent = signed
    for step in path[:-1]:
        parent = parent[step]
    old = parent[path[-1]]
    parent[path[-1]] = data.draw(st.text(max_size=12).filter(lambda s: s != old))
    [check] = verify_signatures(signed, now=NOW)
    assert not check.valid
