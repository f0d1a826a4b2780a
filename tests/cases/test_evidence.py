"""Evidence on both backends: blobs kept once by SHA-256, the size limit, the chain of custody
(a read is recorded before a byte is handed out), tampering detected on read and on verify,
merged and unknown incidents refused, names made safe."""

from __future__ import annotations

import hashlib
import io
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from quell.cases.evidence import EvidenceIntegrityError, EvidenceService
from quell.clock import ManualClock
from quell.errors import Conflict, InvalidInput, NotFound, TooLarge
from quell.runtime import Runtime
from quell.store.schema import evidence_custody, incident_evidence

MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "title"}}
PCAP = b"\xd4\xc3\xb2\xa1" + bytes(range(256)) * 40


def _incident(runtime: Runtime, title: str, src: str) -> str:
    if not any(s.name == "edr" for s in runtime.sources.list_all()):
        runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": title, "ts": "2026-11-28T08:00:00Z", "src": src}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    return next(i.id for i in runtime.incidents.list_all() if i.title == title)


@pytest.fixture
def incident_id(runtime: Runtime) -> str:
    return _incident(runtime, "beacon", "203.0.113.9")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _tamper(path: Path, content: bytes) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    path.write_bytes(content)


def test_evidence_is_stored_by_its_sha256_with_rows_timeline_custody_and_audit(
    runtime: Runtime, incident_id: str, clock: ManualClock
) -> None:
    evidence = runtime.evidence.add(
        incident_id, PCAP, name="beacon.pcap", media_type="application/vnd.tcpdump.pcap",
        by="alice", description="capture at the edge",
    )  # fmt: skip
    digest = hashlib.sha256(PCAP).hexdigest()
    assert (evidence.sha256, evidence.size, evidence.name) == (digest, len(PCAP), "beacon.pcap")
    assert (evidence.added_by, evidence.added_at) == ("alice", clock.now())
    root = runtime.settings.data_dir / "evidence"
    blob = root / digest[:2] / digest[2:4] / digest
    assert _files(root) == [blob]
    assert blob.read_bytes() == PCAP
    assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only

    assert runtime.evidence.get(evidence.id) == evidence
    assert runtime.evidence.list(incident_id) == [evidence]
    (added,) = runtime.evidence.custody(evidence.id)
    assert (added.action, added.actor, added.at) == ("added", "alice", clock.now())
    assert added.detail == {"sha256": digest, "size": len(PCAP), "name": "beacon.pcap",
                            "blob": "new"}  # fmt: skip
    event = runtime.incidents.timeline(incident_id)[-1]
    assert (event.kind, event.actor) == ("evidence_added", "alice")
    assert event.data["evidence_id"] == evidence.id
    assert event.data["sha256"] == digest
    (audited,) = runtime.audit.list_all(action="evidence.")
    assert (audited.action, audited.subject, audited.actor) == (
        "evidence.added",
        evidence.id,
        "alice",
    )
    assert audited.detail["incident_id"] == incident_id
    assert runtime.evidence.max_bytes == 256 * 1024 * 1024  # the setting's default


def test_the_same_bytes_are_stored_once(runtime: Runtime, incident_id: str) -> None:
    other = _incident(runtime, "phish", "198.51.100.7")
    first = runtime.evidence.add(incident_id, PCAP, name="a.pcap", by="alice")
    root = runtime.settings.data_dir / "evidence"
    (blob,) = _files(root)
    inode = blob.stat().st_ino
    second = runtime.evidence.add(other, io.BytesIO(PCAP), name="b.pcap", by="bob")
    third = runtime.evidence.add(incident_id, b"other bytes", name="c.txt", by="bob")

    assert first.sha256 == second.sha256 != third.sha256
    assert len({first.id, second.id, third.id}) == 3
    assert len(_files(root)) == 2
    assert blob.stat().st_ino == inode  # reused, not rewritten
    assert runtime.evidence.custody(second.id)[0].detail["blob"] == "existing"
    assert [e.name for e in runtime.evidence.list(incident_id)] == ["a.pcap", "c.txt"]
    assert [e.name for e in runtime.evidence.list(other)] == ["b.pcap"]


def test_over_the_size_limit_is_refused_and_leaves_nothing(
    runtime: Runtime, incident_id: str, tmp_path: Path
) -> None:
    root = tmp_path / "small"
    service = EvidenceService(runtime.db, runtime.clock, root, runtime.audit, max_bytes=4096)
    with pytest.raises(TooLarge, match="larger than the 4096-byte limit"):
        service.add(incident_id, io.BytesIO(b"x" * 4097), name="big.bin", by="alice")
    assert _files(root) == []
    assert list(root.rglob("*")) == []  # no temporary file, no blob directory
    with runtime.db.read() as conn:
        for table in (incident_evidence, evidence_custody):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 0
    assert [e.kind for e in runtime.incidents.timeline(incident_id)][-1] != "evidence_added"

    exact = service.add(incident_id, b"x" * 4096, name="fits.bin", by="alice")
    assert exact.size == 4096
    assert len(_files(root)) == 1


def test_custody_is_oldest_first_with_who_and_why(
    runtime: Runtime, incident_id: str, clock: ManualClock
) -> None:
    evidence = runtime.evidence.add(incident_id, PCAP, name="beacon.pcap", by="alice")
    clock.advance(timedelta(minutes=5))
    found, content = runtime.evidence.open(evidence.id, by="bob", purpose="triage")
    with content:
        assert content.read() == PCAP
    assert found == evidence
    clock.advance(timedelta(minutes=5))
    assert runtime.evidence.verify(evidence.id, by="carol") is True
    for _ in range(3):  # the same instant: still in the order they happened
        with runtime.evidence.open(evidence.id, by="dave")[1]:
            pass

    trail = runtime.evidence.custody(evidence.id)
    assert [(c.action, c.actor) for c in trail] == [
        ("added", "alice"),
        ("read", "bob"),
        ("verified", "carol"),
        ("read", "dave"),
        ("read", "dave"),
        ("read", "dave"),
    ]
    assert trail[1].detail == {"purpose": "triage"}
    assert trail[1].at - trail[0].at == timedelta(minutes=5)
    actions = [e.action for e in reversed(runtime.audit.list_all(action="evidence."))]
    assert actions == [
        "evidence.added",
        "evidence.read",
        "evidence.verified",
        *["evidence.read"] * 3,
    ]


def test_a_read_is_on_the_chain_of_custody_before_a_byte_is_handed_out(
    runtime: Runtime, incident_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = runtime.evidence
    evidence = service.add(incident_id, PCAP, name="beacon.pcap", by="alice")
    seen: list[list[str]] = []
    check = service._check

    def spy(found: Any, copy: Any) -> Any:
        seen.append([c.action for c in service.custody(found.id)])  # when the blob is opened
        return check(found, copy)

    monkeypatch.setattr(service, "_check", spy)
    with service.open(evidence.id, by="bob")[1] as content:
        assert content.read() == PCAP
    assert seen == [["added", "read"]]

    def down(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(service, "_custody", down)
    with pytest.raises(RuntimeError, match="went away"):
        service.open(evidence.id, by="mallory")  # not recorded, so not read
    assert len(seen) == 1


def test_a_blob_changed_on_disk_is_refused_on_read_and_fails_verify(
    runtime: Runtime, incident_id: str
) -> None:
    evidence = runtime.evidence.add(incident_id, PCAP, name="beacon.pcap", by="alice")
    blob = runtime.evidence.blob_path(evidence.sha256)
    _tamper(blob, PCAP[:-1] + b"\x00")  # same size, other bytes

    with pytest.raises(EvidenceIntegrityError, match="does not match its SHA-256") as raised:
        runtime.evidence.open(evidence.id, by="bob", purpose="court")
    assert raised.value.details["found_sha256"] != evidence.sha256
    assert runtime.evidence.verify(evidence.id, by="carol") is False
    trail = runtime.evidence.custody(evidence.id)
    assert [(c.action, c.actor) for c in trail] == [
        ("added", "alice"),
        ("read", "bob"),
        ("verify_failed", "bob"),
        ("verify_failed", "carol"),
    ]
    assert trail[2].detail["problem"] == "mismatch"
    assert trail[2].detail["sha256"] == evidence.sha256

    _tamper(blob, PCAP + b"appended")  # other size
    assert runtime.evidence.verify(evidence.id, by="carol") is False

    blob.unlink()
    with pytest.raises(EvidenceIntegrityError, match="missing from the evidence store"):
        runtime.evidence.open(evidence.id, by="bob")
    assert runtime.evidence.verify(evidence.id, by="carol") is False
    assert runtime.evidence.custody(evidence.id)[-1].detail["problem"] == "missing"
    failed = runtime.audit.list_all(action="evidence.verify_failed")
    assert len(failed) == 5

    runtime.evidence.add(incident_id, PCAP, name="again.pcap", by="alice")  # restores the blob
    assert runtime.evidence.verify(evidence.id, by="carol") is True
    with runtime.evidence.open(evidence.id, by="bob")[1] as content:
        assert content.read() == PCAP


def test_a_damaged_blob_is_replaced_not_reused_by_the_same_bytes(
    runtime: Runtime, incident_id: str
) -> None:
    first = runtime.evidence.add(incident_id, PCAP, name="a.pcap", by="alice")
    _tamper(runtime.evidence.blob_path(first.sha256), b"garbage")
    second = runtime.evidence.add(incident_id, PCAP, name="b.pcap", by="alice")
    assert runtime.evidence.custody(second.id)[0].detail["blob"] == "new"
    assert runtime.evidence.verify(first.id, by="carol") is True


def test_unknown_and_merged_incidents_are_refused(runtime: Runtime, incident_id: str) -> None:
    with pytest.raises(NotFound, match="no incident 'inc_nope'"):
        runtime.evidence.add("inc_nope", b"x", name="x.txt", by="alice")
    with pytest.raises(NotFound, match="no incident"):
        runtime.evidence.list("inc_nope")
    for lookup in (runtime.evidence.get, runtime.evidence.custody):
        with pytest.raises(NotFound, match="no evidence 'evd_nope'"):
            lookup("evd_nope")
    with pytest.raises(NotFound, match="no evidence"):
        runtime.evidence.open("evd_nope", by="bob")

    survivor = _incident(runtime, "phish", "198.51.100.7")
    runtime.cases.merge(incident_id, survivor, by="alice")
    with pytest.raises(Conflict, match=f"was merged into {survivor}; add evidence there"):
        runtime.evidence.add(incident_id, b"x", name="x.txt", by="alice")
    assert _files(runtime.settings.data_dir / "evidence") == []  # refused before storing
    assert runtime.evidence.add(survivor, b"x", name="x.txt", by="alice").incident_id == survivor


def test_names_and_media_types_are_made_safe(runtime: Runtime, incident_id: str) -> None:
    add = runtime.evidence.add
    escaped = add(incident_id, b"root:x:0:0", name="../../etc/passwd", by="alice")
    assert escaped.name == ".._.._etc_passwd"
    root = runtime.settings.data_dir / "evidence"
    assert _files(root) == [runtime.evidence.blob_path(escaped.sha256)]
    assert add(incident_id, b"1", name="a\\b\nc\x00d.txt", by="a").name == "a_bcd.txt"
    long = add(incident_id, b"2", name="x" * 400 + ".eml", by="a").name
    assert (len(long), long[-4:]) == (255, ".eml")
    assert len(add(incident_id, b"3", name="y" * 400, by="a").name) == 255
    for bad in ("..", " . ", "\n"):
        with pytest.raises(InvalidInput, match="needs a name"):
            add(incident_id, b"4", name=bad, by="a")
    for media in ("text/html\r\nX-Evil: 1", "html", "a/b/c", "x" * 200 + "/y"):
        with pytest.raises(InvalidInput, match="not a media type"):
            add(incident_id, b"5", name="m.bin", media_type=media, by="a")
    kept = add(incident_id, b"6", name="m.txt", media_type="Text/Plain; charset=utf-8", by="a")
    assert kept.media_type == "text/plain; charset=utf-8"
    with pytest.raises(InvalidInput, match="purpose is at most 1000"):
        runtime.evidence.open(escaped.id, by="bob", purpose="p" * 1001)
