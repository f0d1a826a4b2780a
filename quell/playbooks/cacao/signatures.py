"""CACAO 2.0 playbook signatures (JSS): sign a playbook, and verify the signatures it carries.

A CACAO 2.0 playbook may carry ``signatures``: a list of ``jss`` signature objects (CACAO 2.0
section 10.15 "signature" data type, Appendix A). The procedure here is the one the CACAO TC
works through in ``oasis-tcs/cacao`` ``Examples/CACAO-2.0/signature-example-rsa.md`` (and the
reference code in ``openplaybooks/libcacao``); the tests replay that example's RS256 test vector,
so this module is byte-for-byte interoperable with it. For one signature object ``S``:

1. Take the playbook and set ``signatures`` to ``[S']``, where ``S'`` is ``S`` without ``value``
   (removed, not emptied) and without a nested countersignature ``signature``. Every *other*
   signature is removed ("temporarily remove any existing signature objects", Appendix A step 2),
   so signatures are independent: adding, removing or reordering one never breaks another.
   A countersignature is made after ``S`` exists, so it cannot be part of what ``S`` signs.
2. Canonicalize that object with JCS (RFC 8785).
3. Hash the JCS bytes with ``hash_algorithm`` (an IANA Named Information name: ``sha-256``,
   ``sha-384``, ``sha-512``, ``sha3-256``, ``sha3-384``, ``sha3-512``) and write the digest as
   lowercase hex.
4. Sign the ASCII bytes of that hex string with ``algorithm`` exactly as JWS signs its signing
   input (RFC 7518 section 3, RFC 8037): ``RS*`` RSASSA-PKCS1-v1_5 and ``PS*`` RSASSA-PSS (salt
   as long as the hash) with SHA-256/384/512 and an RSA key of at least 2048 bits; ``ES*`` ECDSA
   on P-256/P-384/P-521 with the JWS fixed-length ``r || s`` encoding, not DER; ``Ed25519`` and
   ``Ed448`` EdDSA. So RS256 over sha-256 hashes twice: sha-256 of the JCS bytes to hex, then
   SHA-256 of that hex inside PKCS#1 - that is what the TC's example does.
5. ``value`` is the signature in base64url without padding.

The key is the one embedded in the signature: ``public_key`` (the spec's form is a PEM body
without header and footer, i.e. base64 DER SubjectPublicKeyInfo; a full PEM block is accepted
too) or the first certificate of ``public_cert_chain`` (base64 DER as in JWK ``x5c``, or PEM).
A key given only by ``cert_url`` or ``thumbprint`` is not fetched: such a signature is reported
as not verifiable. Certificate chains are not validated against any trust store.

"verified" therefore means: the playbook is unchanged since someone holding the private key of
the *embedded* public key signed it, for this playbook id and version, within the signature's
validity window. It does not say who that someone is - anyone can re-sign an edited playbook with
their own key and any ``signee``. Deciding whether a key belongs to the claimed signee is the
caller's trust decision.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from quell.errors import InvalidInput

VERIFIED = "verified"
VALUE_MISMATCH = "value does not match the playbook"

_RSA_MIN_BITS = 2048  # RFC 7518 section 3.3: "A key of size 2048 bits or larger MUST be used"

# IANA "Named Information Hash Algorithm" names (case-sensitive, per the schema) -> hashlib names.
_HASHES = {
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
}

_REQUIRED_STRINGS = (
    "id",
    "created",
    "modified",
    "signee",
    "related_to",
    "related_version",
    "hash_algorithm",
    "algorithm",
    "value",
)
# The CACAO timestamp data type: RFC 3339 in UTC with a "Z".
_TIMESTAMP = re.compile(
    r"[0-9]{4}-(0[1-9]|1[012])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]+)?Z"
)
_IDENTITY = re.compile(
    r"identity--[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-5][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-"
    r"[0-9a-fA-F]{12}"
)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


@dataclass(frozen=True)
class _RsaJwa:
    """RS* (PKCS#1 v1.5) or PS* (PSS): the JWS RSA algorithms."""

    digest: type[hashes.HashAlgorithm]
    pss: bool
    needs: str = f"an RSA key of at least {_RSA_MIN_BITS} bits"

    def padding(self) -> padding.AsymmetricPadding:
        """PSS with MGF1 over the same hash and a hash-long salt (RFC 7518 3.5), else PKCS#1."""
        if self.pss:
            return padding.PSS(
                mgf=padding.MGF1(self.digest()), salt_length=padding.PSS.DIGEST_LENGTH
            )
        return padding.PKCS1v15()


@dataclass(frozen=True)
class _EcJwa:
    """ES*: ECDSA, each name tied to one curve and hash (RFC 7518 3.4)."""

    digest: type[hashes.HashAlgorithm]
    curve: type[ec.EllipticCurve]
    curve_name: str
    size: int  # bytes of r and of s in the JWS encoding: the curve order's length, left-padded

    @property
    def needs(self) -> str:
        """What the key must be, for the mismatch message."""
        return f"an EC {self.curve_name} key"


@dataclass(frozen=True)
class _EdJwa:
    """Ed25519 / Ed448 (RFC 8037, named explicitly as CACAO's vocabulary does)."""

    public: type[ed25519.Ed25519PublicKey] | type[ed448.Ed448PublicKey]
    private: type[ed25519.Ed25519PrivateKey] | type[ed448.Ed448PrivateKey]
    needs: str


_Jwa = _RsaJwa | _EcJwa | _EdJwa

_ALGORITHMS: dict[str, _Jwa] = {
    "RS256": _RsaJwa(hashes.SHA256, pss=False),
    "RS384": _RsaJwa(hashes.SHA384, pss=False),
    "RS512": _RsaJwa(hashes.SHA512, pss=False),
    "PS256": _RsaJwa(hashes.SHA256, pss=True),
    "PS384": _RsaJwa(hashes.SHA384, pss=True),
    "PS512": _RsaJwa(hashes.SHA512, pss=True),
    "ES256": _EcJwa(hashes.SHA256, ec.SECP256R1, "P-256", 32),
    "ES384": _EcJwa(hashes.SHA384, ec.SECP384R1, "P-384", 48),
    "ES512": _EcJwa(hashes.SHA512, ec.SECP521R1, "P-521", 66),
    "Ed25519": _EdJwa(ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey, "an Ed25519 key"),
    "Ed448": _EdJwa(ed448.Ed448PublicKey, ed448.Ed448PrivateKey, "an Ed448 key"),
}


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome for one element of a playbook's ``signatures``."""

    id: str | None
    signee: str | None
    algorithm: str | None
    valid: bool
    reason: str  # "verified", or the first reason the signature does not hold

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON output (CLI, API, import reports)."""
        return {
            "id": self.id,
            "signee": self.signee,
            "algorithm": self.algorithm,
            "valid": self.valid,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SigningKey:
    """A private key and the identity fields a new signature carries.

    The key bytes and password are kept out of ``repr`` so that logging the object, or a
    traceback that shows it, never discloses them.
    """

    private_key_pem: bytes = field(repr=False)
    algorithm: str
    signee: str
    created_by: str | None = None
    password: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm not in _ALGORITHMS:
            raise InvalidInput(
                f"unsupported signature algorithm {self.algorithm!r}; "
                f"use one of {', '.join(_ALGORITHMS)}",
                field="algorithm",
            )
        if not self.signee.strip():
            raise InvalidInput("a signature needs a signee name", field="signee")
        if self.created_by is not None and not _IDENTITY.fullmatch(self.created_by):
            raise InvalidInput(
                "created_by must be a STIX identity id (identity--<uuid>)", field="created_by"
            )

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        algorithm: str | None = None,
        signee: str,
        password: bytes | None = None,
        created_by: str | None = None,
    ) -> SigningKey:
        """Read a PEM private key; infer ``algorithm`` from the key type when not given.

        RSA gives RS256, EC P-256/P-384/P-521 give ES256/ES384/ES512, Ed25519 and Ed448 give
        themselves. The key is loaded here, so a wrong password or an algorithm that does not
        fit the key fails now, with the file named, rather than at signing time.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(
                f"{path}: cannot read the key file ({exc.strerror})", field="key"
            ) from None
        try:
            private = _load_private_key(data, password)
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc.message}", field="key") from None
        chosen = algorithm if algorithm is not None else _default_algorithm(private)
        if chosen is None:
            raise InvalidInput(
                f"{path}: {_describe(private.public_key())} has no JSS signature algorithm",
                field="key",
            )
        key = cls(data, chosen, signee, created_by, password)  # checks the algorithm's name
        _signer(chosen, _ALGORITHMS[chosen], private)  # refuses a key the algorithm cannot use
        return key


def verify_signatures(
    playbook: Mapping[str, Any], *, now: datetime | None = None
) -> list[SignatureCheck]:
    """Check each element of ``playbook["signatures"]``; one result each, in order.

    Never raises on bad input: a malformed signature object is a result with ``valid=False``
    and the reason. No signatures gives ``[]``; a ``signatures`` that is not a list gives one
    failed result, so a broken signature list is never mistaken for an unsigned playbook.
    ``now`` (default: the current time; naive means UTC) is compared with ``valid_from`` and
    ``valid_until``.
    """
    signatures = playbook.get("signatures")
    if signatures is None:
        return []
    if not isinstance(signatures, list):
        return [SignatureCheck(None, None, None, valid=False, reason="signatures is not a list")]
    moment = _aware(now) if now is not None else datetime.now(UTC)
    return [_check(playbook, signature, moment) for signature in signatures]


def sign_playbook(
    playbook: Mapping[str, Any],
    key: SigningKey,
    *,
    now: datetime | None = None,
    hash_algorithm: str = "sha-256",
) -> dict[str, Any]:
    """A copy of ``playbook`` with a new JSS signature appended to ``signatures``.

    Existing signatures are kept (they do not sign each other, see the module docstring), and
    ``modified`` is unchanged: the spec says adding a signature is not a new playbook version.
    The signature embeds the public key in the spec's form (base64 DER SubjectPublicKeyInfo,
    the PEM body without header and footer), so any JSS verifier can check it offline.
    """
    if hash_algorithm not in _HASHES:
        raise InvalidInput(
            f"unsupported hash_algorithm {hash_algorithm!r}; use one of {', '.join(_HASHES)}",
            field="hash_algorithm",
        )
    playbook_id = playbook.get("id")
    modified = playbook.get("modified")
    if not isinstance(playbook_id, str) or not playbook_id:
        raise InvalidInput("the playbook has no id to sign", field="id")
    if not isinstance(modified, str) or not _TIMESTAMP.fullmatch(modified):
        raise InvalidInput("the playbook has no modified timestamp to sign", field="modified")
    existing = playbook.get("signatures", [])
    if not isinstance(existing, list):
        raise InvalidInput("the playbook's signatures is not a list", field="signatures")

    private = _load_private_key(key.private_key_pem, key.password)
    sign = _signer(key.algorithm, _ALGORITHMS[key.algorithm], private)
    stamp = _timestamp(_aware(now) if now is not None else datetime.now(UTC))
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature: dict[str, Any] = {
        "type": "jss",
        "id": f"jss--{uuid.uuid4()}",
        **({"created_by": key.created_by} if key.created_by is not None else {}),
        "created": stamp,
        "modified": stamp,
        "signee": key.signee,
        "related_to": playbook_id,
        "related_version": modified,
        "hash_algorithm": hash_algorithm,
        "algorithm": key.algorithm,
        "public_key": base64.b64encode(public_der).decode("ascii"),
    }
    try:
        signed = _signed_bytes(playbook, signature)
    except rfc8785.CanonicalizationError as exc:
        raise InvalidInput(
            f"the playbook cannot be canonicalized for signing (JCS): {exc}", field="playbook"
        ) from None
    signature["value"] = _b64url(sign(signed))
    # A deep copy: the caller's playbook is left as it was, and shares nothing with the result.
    return copy.deepcopy({**playbook, "signatures": [*existing, signature]})


def _check(playbook: Mapping[str, Any], signature: object, now: datetime) -> SignatureCheck:
    """One signature's result: its identifying fields, and the first problem or "verified"."""
    if not isinstance(signature, Mapping):
        return SignatureCheck(None, None, None, valid=False, reason="not a JSON object")
    reason = _problem(playbook, signature, now)
    return SignatureCheck(
        id=_string(signature.get("id")),
        signee=_string(signature.get("signee")),
        algorithm=_string(signature.get("algorithm")),
        valid=reason is None,
        reason=reason or VERIFIED,
    )


def _problem(
    playbook: Mapping[str, Any], signature: Mapping[str, Any], now: datetime
) -> str | None:
    """Why ``signature`` does not hold for ``playbook`` at ``now``, or None when it does."""
    if signature.get("type") != "jss":
        return "type is not jss"
    for name in _REQUIRED_STRINGS:
        if not isinstance(signature.get(name), str):
            return f"missing {name}" if name not in signature else f"{name} is not a string"
    revoked = signature.get("revoked", False)
    if not isinstance(revoked, bool):
        return "revoked is not a boolean"
    if revoked:
        return "revoked"
    if signature["related_to"] != playbook.get("id"):
        return "related_to names another playbook"
    if signature["related_version"] != playbook.get("modified"):
        return "related_version is not the playbook's modified (another version was signed)"
    window = _window_problem(signature, now)
    if window is not None:
        return window
    if signature["hash_algorithm"] not in _HASHES:
        return f"unsupported hash_algorithm {signature['hash_algorithm']}"
    name = signature["algorithm"]
    jwa = _ALGORITHMS.get(name)
    if jwa is None:
        return f"unsupported algorithm {name}"
    public = _embedded_key(signature)
    if isinstance(public, str):
        return public
    verify = _verifier(name, jwa, public)
    if isinstance(verify, str):
        return verify
    value = _b64url_decode(signature["value"])
    if value is None:
        return "value is not base64url"
    try:
        signed = _signed_bytes(playbook, signature)
    except rfc8785.CanonicalizationError as exc:
        return f"the playbook cannot be canonicalized (JCS): {exc}"
    return None if verify(value, signed) else VALUE_MISMATCH


def _window_problem(signature: Mapping[str, Any], now: datetime) -> str | None:
    """``valid_from`` / ``valid_until``: both optional, both CACAO timestamps when present."""
    bounds: dict[str, datetime] = {}
    for name in ("valid_from", "valid_until"):
        if name in signature:
            parsed = _parse_timestamp(signature[name])
            if parsed is None:
                return f"{name} is not a CACAO timestamp"
            bounds[name] = parsed
    if "valid_from" in bounds and now < bounds["valid_from"]:
        return "not yet valid (valid_from is in the future)"
    if "valid_until" in bounds and now >= bounds["valid_until"]:
        return "expired"
    return None


def _signed_bytes(playbook: Mapping[str, Any], signature: Mapping[str, Any]) -> bytes:
    """What ``algorithm`` signs: hex(hash(JCS(playbook with only this signature, no value)))."""
    unsigned = {k: v for k, v in signature.items() if k not in ("value", "signature")}
    canonical = rfc8785.dumps({**playbook, "signatures": [unsigned]})
    digest = hashlib.new(_HASHES[signature["hash_algorithm"]], canonical).hexdigest()
    return digest.encode("ascii")


def _embedded_key(signature: Mapping[str, Any]) -> PublicKeyTypes | str:
    """The public key carried by the signature, or why there is none to use."""
    from_key = from_chain = None
    if "public_key" in signature:
        from_key = _parse_public_key(signature["public_key"])
        if from_key is None:
            return "public_key is not a base64 DER or PEM public key"
    if "public_cert_chain" in signature:
        from_chain = _parse_first_certificate(signature["public_cert_chain"])
        if from_chain is None:
            return "public_cert_chain[0] is not a base64 DER or PEM certificate"
    if from_key is not None and from_chain is not None and _spki(from_key) != _spki(from_chain):
        return "public_key does not match the key of public_cert_chain[0]"
    if from_key is not None:
        return from_key
    if from_chain is not None:
        return from_chain
    if "cert_url" in signature or "thumbprint" in signature:
        return "the public key is not embedded (only cert_url or thumbprint); it is not fetched"
    return "no public_key"


def _parse_public_key(text: object) -> PublicKeyTypes | None:
    """A PEM block, or its body alone (base64 DER SubjectPublicKeyInfo, the spec's form)."""
    if not isinstance(text, str):
        return None
    try:
        if text.lstrip().startswith("-----BEGIN"):
            return serialization.load_pem_public_key(text.encode())
        der = _b64decode(text)
        return None if der is None else serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        return None


def _parse_first_certificate(chain: object) -> PublicKeyTypes | None:
    """The key of the first certificate (JWK ``x5c``: base64 DER; PEM is accepted too)."""
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        return None
    text: str = chain[0]
    try:
        if text.lstrip().startswith("-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(text.encode())
        else:
            der = _b64decode(text)
            if der is None:
                return None
            certificate = x509.load_der_x509_certificate(der)
        return certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None


def _verifier(name: str, jwa: _Jwa, key: PublicKeyTypes) -> Callable[[bytes, bytes], bool] | str:
    """A check of (value, signed bytes) for this algorithm and key, or why the key does not fit."""
    match jwa:
        case _RsaJwa() if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _RSA_MIN_BITS:
            rsa_key = key

            def verify_rsa(value: bytes, data: bytes) -> bool:
                return _holds(lambda: rsa_key.verify(value, data, jwa.padding(), jwa.digest()))

            return verify_rsa
        case _EcJwa() if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
            key.curve, jwa.curve
        ):
            ec_key = key

            def verify_ec(value: bytes, data: bytes) -> bool:
                if len(value) != 2 * jwa.size:
                    return False
                der = encode_dss_signature(
                    int.from_bytes(value[: jwa.size], "big"),
                    int.from_bytes(value[jwa.size :], "big"),
                )
                return _holds(lambda: ec_key.verify(der, data, ec.ECDSA(jwa.digest())))

            return verify_ec
        case _EdJwa() if isinstance(key, jwa.public):
            ed_key = key
            return lambda value, data: _holds(lambda: ed_key.verify(value, data))
    return f"algorithm {name} needs {jwa.needs}, but the key is {_describe(key)}"


def _holds(verify: Callable[[], None]) -> bool:
    """True when a cryptography ``verify`` call accepts, False when it rejects."""
    try:
        verify()
    except InvalidSignature:
        return False
    return True


def _signer(name: str, jwa: _Jwa, key: PrivateKeyTypes) -> Callable[[bytes], bytes]:
    """A signing function for this algorithm and key; InvalidInput when the key does not fit."""
    match jwa:
        case _RsaJwa() if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= _RSA_MIN_BITS:
            rsa_key = key
            return lambda data: rsa_key.sign(data, jwa.padding(), jwa.digest())
        case _EcJwa() if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
            key.curve, jwa.curve
        ):
            ec_key = key

            def sign_ec(data: bytes) -> bytes:
                r, s = decode_dss_signature(ec_key.sign(data, ec.ECDSA(jwa.digest())))
                return r.to_bytes(jwa.size, "big") + s.to_bytes(jwa.size, "big")

            return sign_ec
        case _EdJwa() if isinstance(key, jwa.private):
            ed_key = key
            return lambda data: ed_key.sign(data)
    raise InvalidInput(
        f"algorithm {name} needs {jwa.needs}, but the key is {_describe(key.public_key())}",
        field="algorithm",
    )


def _load_private_key(data: bytes, password: bytes | None) -> PrivateKeyTypes:
    """Load a PEM private key. Messages are fixed: nothing from the key reaches an error."""
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:
        message = (
            "the private key is encrypted: give its password"
            if password is None
            else "a password was given but the private key is not encrypted"
        )
    except (ValueError, UnsupportedAlgorithm):
        message = "cannot load the private key: not a PEM private key, or the password is wrong"
    raise InvalidInput(message, field="key") from None


def _default_algorithm(key: PrivateKeyTypes) -> str | None:
    """The usual JSS algorithm for a key type (RS256 for RSA, the curve's ES* for EC)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        for name, jwa in _ALGORITHMS.items():
            if isinstance(jwa, _EcJwa) and isinstance(key.curve, jwa.curve):
                return name
        return None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "Ed448"
    return None


def _describe(key: PublicKeyTypes) -> str:
    """A key's type for messages: "an RSA 1024-bit key", "an EC secp256k1 key", ..."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA {key.key_size}-bit key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC {key.curve.name} key"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PublicKey):
        return "an Ed448 key"
    return f"a {type(key).__name__}"


def _spki(key: PublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo, to compare two keys."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64decode(text: str) -> bytes | None:
    """Standard base64 as PEM bodies and ``x5c`` use it; line breaks and missing padding allowed."""
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except binascii.Error:
        return None


def _b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Strict base64url: only its alphabet, and canonical (no stray bits in the last character).

    Canonical matters: otherwise several ``value`` strings decode to the same signature.
    """
    if not _BASE64URL.fullmatch(text):
        return None
    bare = text.rstrip("=")
    try:
        data = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except binascii.Error:
        return None
    return data if _b64url(data) == bare else None


def _parse_timestamp(value: object) -> datetime | None:
    """A CACAO timestamp (RFC 3339, UTC, ``Z``) as an aware datetime; None when malformed."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # a leap second (":60") matches the pattern but is not a datetime
        return None


def _timestamp(moment: datetime) -> str:
    """A CACAO timestamp with exactly three fractional digits, as signatures require."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _aware(moment: datetime) -> datetime:
    """Treat a naive datetime as UTC, so comparisons with timestamps never raise."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _string(value: object) -> str | None:
    """``value`` when it is a string, for the identifying fields of a result."""
    return value if isinstance(value, str) else None
