"""MISP events and feeds: the corpus events through the store, tags, to_ids, sightings, feeds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from quell.clock import ManualClock
from quell.intel.misp import (
    INDICATOR_MISP_TYPES,
    MISP_TYPES,
    events_to_fetch,
    manifest_timestamp,
    parse_event,
    parse_feed_dir,
    parse_time,
)
from quell.intel.model import IntelError, MatchKind, Tlp, keyed
from quell.intel.store import IntelStore
from quell.store.database import Database
from tests.fixtures.requirements import corpus_path

SIGHTING_EVENT = "5b646415-7b48-40d5-86b4-c0070acd0835"
MALWARE_EVENT = "5a4e4fdd-1eb4-4ff3-9e87-43fa950d210f"
RANDOM_EVENT = "5758ebf5-c898-48e6-9fe9-5665c0a83866"
OBJECT_EVENT = "0b9e3e5a-1d7c-4c1e-9f54-8a3d2b6c7e01"  # the corpus file has no uuid: given one


def _corpus(name: str) -> bytes:
    return (corpus_path() / "misp" / name).read_bytes()


# (added, unsupported, expired, sightings) of each corpus event, imported alone:
# - event_obj_attr_tag.json: a file object (filename "bar": not an indicator type) and a url
#   object (https://www.circl.lu, to_ids): 1 indicator, 1 unsupported.
# - malware_exist.json ({"response": [...]}): one file object. malware-sample
#   (simple.json|<md5>) and md5 are the same digest (one indicator); sha1 and sha256; filename
#   and size-in-bytes are no indicator types: 3 indicators, 2 unsupported.
# - misp_event.json (a bare event): a url with to_ids false (context) and a text: nothing
#   imported, 2 unsupported.
# - sighting_1.json: 4 domains and 1 url, all to_ids. Sightings: 8885 and 8889 are type 0
#   (2 sightings); 8886, 8887 are false positives (ignored); 8888 has a type 2 expiration
#   (2019-02-27), so that domain is kept expired, with a false positive besides.
CORPUS_COUNTS = {
    "event_obj_attr_tag.json": (1, 1, 0, 0),
    "malware_exist.json": (3, 2, 0, 0),
    "misp_event.json": (0, 2, 0, 0),
    "sighting_1.json": (4, 0, 1, 2),
}


@pytest.mark.requires("corpus")
def test_the_counts_cover_every_event_file_of_the_corpus() -> None:
    assert {p.name for p in (corpus_path() / "misp").glob("*.json")} == set(CORPUS_COUNTS)


@pytest.mark.requires("corpus")
@pytest.mark.parametrize("name", sorted(CORPUS_COUNTS))
def test_every_corpus_event_imports_with_exact_counts(
    database: Database, clock: ManualClock, name: str
) -> None:
    store = IntelStore(database, clock)
    first = store.apply("misp", parse_event(_corpus(name), origin=name))
    added, unsupported, expired, sightings = CORPUS_COUNTS[name]
    assert (first.added, first.updated, first.unchanged) == (added, 0, 0)
    assert (first.unsupported, first.expired, first.sightings) == (
        unsupported,
        expired,
        sightings,
    )
    assert all(item.where.startswith(f"{name}: event") for item in first.unsupported_items)
    again = store.apply("misp", parse_event(_corpus(name), origin=name))
    assert (again.added, again.updated, again.unchanged, again.expired) == (0, 0, added, expired)
    assert (again.unsupported, again.sightings) == (unsupported, 0)


@pytest.mark.requires("corpus")
def test_corpus_fields_reach_the_store(database: Database, clock: ManualClock) -> None:
    store = IntelStore(database, clock)
    store.apply("misp", parse_event(_corpus("sighting_1.json")))
    (hit,) = store.lookup("domain", "ooiasjdnqjwbeasdasd.com")
    assert (hit.severity_id, hit.confidence, hit.tlp) == (2, 50, Tlp.CLEAR)  # threat level 3
    assert hit.tags == ("PasteBin: MALWAREMESSIAGH", 'misp-galaxy:banker="Gozi"')
    row = store.get(hit.indicator_id or "")
    assert row["stix_ids"] == ["indicator--5b6464ca-e73c-4707-9b8a-d0350acd0835"]
    assert row["kill_chain"] == ["misp-category:Network activity"]
    assert row["description"] == "Ursnif, MALWAREMESSIAGH: Ursnif"
    assert [s["reported_by"] for s in row["recent_sightings"]] == ["ORGNAME"]
    # The expiration sighting stops the domain matching; it is kept, with its end.
    assert store.lookup("domain", "diqjwhebseqhbasdh.com") == []
    (expired,) = store.lookup("domain", "diqjwhebseqhbasdh.com", include_expired=True)
    assert expired.valid_until is not None
    assert expired.valid_until.replace(tzinfo=UTC) == datetime(2019, 2, 27, 7, 52, 48, tzinfo=UTC)

    store.apply("misp", parse_event(_corpus("malware_exist.json")))
    (md5,) = store.lookup("md5", "7637BEDDACBEAC59D44469B2B120B9E6")
    assert md5.severity_id == 4  # threat level 1, high


@pytest.mark.requires("corpus")
def test_to_ids_false_is_context_not_a_detection() -> None:
    parsed = parse_event(_corpus("misp_event.json"))
    assert parsed.records == []
    assert [u.reason for u in parsed.unsupported] == [
        "to_ids is false: MISP marks it context, not a detection",
        "MISP type text is not an indicator type Quell matches",
    ]
    assert parsed.unsupported[0].text == "http://fake.website.com/malware/is/here"


def _attribute(type_: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "value": value, "to_ids": True, **extra}


def _event(*attributes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "Event": {
            "uuid": "11111111-2222-4333-8444-555555555555",
            "info": "Test event",
            "date": "2024-03-01",
            "threat_level_id": "2",
            "Attribute": list(attributes),
            **extra,
        }
    }


def test_tlp_tags_set_the_level_and_never_lower_the_events() -> None:
    event = _event(
        _attribute("ip-dst", "203.0.113.1"),
        _attribute("ip-dst", "203.0.113.2", Tag=[{"name": "tlp:red"}, {"name": "apt"}]),
        _attribute("ip-dst", "203.0.113.3", Tag=[{"name": "tlp:white"}]),
        _attribute("ip-dst", "203.0.113.4", Tag=[{"name": "TLP:AMBER+STRICT"}]),
        _attribute("ip-dst", "203.0.113.5", Tag=[{"name": "tlp:ex:chr"}]),
        Tag=[{"name": "tlp:green"}, {"name": "tlp:amber"}, {"name": "osint"}],
    )
    records = {r.value: r for r in parse_event(event, default_tlp=Tlp.RED).records}
    assert records["203.0.113.1"].tlp is Tlp.AMBER  # the event's highest
    assert records["203.0.113.2"].tlp is Tlp.RED
    assert records["203.0.113.3"].tlp is Tlp.AMBER  # an attribute's lower tag lowers nothing
    assert records["203.0.113.4"].tlp is Tlp.AMBER_STRICT
    assert records["203.0.113.5"].tlp is Tlp.AMBER  # an extension tag is not a level
    assert records["203.0.113.2"].tags == ("osint", "apt")  # TLP tags are the level, not tags
    assert records["203.0.113.5"].tags == ("osint", "tlp:ex:chr")
    database_shape = _event(
        _attribute("md5", "a" * 32, AttributeTag=[{"Tag": {"name": "tlp:amber"}}]),
        EventTag=[{"Tag": {"name": "tlp:green"}}, {"Tag": {"name": "emotet"}}],
    )
    (record,) = parse_event(database_shape).records
    assert (record.tlp, record.tags) == (Tlp.AMBER, ("emotet",))
    assert parse_event(_event(_attribute("md5", "a" * 32))).records[0].tlp is Tlp.CLEAR
    assert (
        parse_event(_event(_attribute("md5", "a" * 32)), default_tlp=Tlp.GREEN).records[0].tlp
        is Tlp.GREEN
    )


def test_confidence_and_severity_come_from_tags_and_threat_level() -> None:
    event = _event(
        _attribute("domain", "a.evil.com"),
        _attribute(
            "domain",
            "b.evil.com",
            Tag=[{"name": 'admiralty-scale:information-credibility="2"'}],
        ),
        _attribute(
            "domain",
            "c.evil.com",
            Tag=[
                {"name": 'misp:confidence-level="usually-confident"'},
                {"name": 'misp:confidence-level="rarely-confident"'},
            ],
        ),
        Tag=[{"name": 'misp:confidence-level="completely-confident"'}],
    )
    records = {r.value: r for r in parse_event(event).records}
    assert records["a.evil.com"].confidence == 100  # the event's
    assert records["b.evil.com"].confidence == 70  # the attribute's beats it
    assert records["c.evil.com"].confidence == 25  # the lowest of one level
    assert {r.severity_id for r in records.values()} == {3}  # threat level 2, medium
    plain = parse_event(_event(_attribute("domain", "a.evil.com")), default_confidence=40)
    assert plain.records[0].confidence == 40
    for level, severity in (("1", 4), ("3", 2), ("4", None)):
        one = parse_event(_event(_attribute("domain", "a.evil.com"), threat_level_id=level))
        assert one.records[0].severity_id == severity


def test_types_map_to_indicators_and_the_rest_is_unsupported() -> None:
    event = _event(
        _attribute("ip-src", "198.51.100.7"),
        _attribute("ip-dst", "10.0.0.0/8"),
        _attribute("ip-dst|port", "2001:db8::1|443"),
        _attribute("ip-src|port", "192.0.2.9|8080"),
        _attribute("hostname", "c2.evil.com"),
        _attribute("hostname|port", "c3.evil.com|8443"),
        _attribute("domain|ip", "evil.net|192.0.2.10"),
        _attribute("url", "evil.org/gate.php"),
        _attribute("email-src", "Phish@Evil.com"),
        _attribute("email-dst", "victim@corp.example"),
        _attribute("email", "x@evil.com"),
        _attribute("filename|sha256", "inv|oice.exe|" + "b" * 64),
        _attribute("filename|sha1", "a.exe|" + "c" * 40),
        _attribute("sha1", "D" * 40),
        _attribute("link", "https://blog.example/report"),
        _attribute("regkey", "HKLM\\Software\\Run"),
        _attribute("vulnerability", "CVE-2021-44228"),
        _attribute("AS", "AS64500"),
        _attribute("md5", "not-a-digest"),
        _attribute("domain", "gone.evil.com", deleted=True),
        Object=[
            {"name": "file", "deleted": True, "Attribute": [_attribute("md5", "e" * 32)]},
            {
                "name": "domain-ip",
                "uuid": "22222222-3333-4444-8555-666666666666",
                "Attribute": [_attribute("domain", "obj.evil.com"), _attribute("text", "x")],
            },
        ],
    )
    parsed = parse_event(event)
    keys = [keyed(r)[0] for r in parsed.records]
    assert keys == [
        "ip:198.51.100.7",
        "net:10.0.0.0/8",
        "ip:2001:db8::1",
        "ip:192.0.2.9",
        "dn:c2.evil.com",
        "dn:c3.evil.com",
        "dn:evil.net",
        "ip:192.0.2.10",
        "url:http://evil.org/gate.php",
        "email:phish@evil.com",
        "email:victim@corp.example",
        "email:x@evil.com",
        "sha256:" + "b" * 64,
        "sha1:" + "c" * 40,
        "sha1:" + "d" * 40,
        "dn:obj.evil.com",
    ]
    assert keyed(parsed.records[1])[2] is MatchKind.CIDR
    assert keyed(parsed.records[4])[2] is MatchKind.EXACT  # a hostname is that name only
    reasons = {u.text: u.reason for u in parsed.unsupported}
    assert reasons == {
        "https://blog.example/report": "MISP type link is not an indicator type Quell matches",
        "HKLM\\Software\\Run": "MISP type regkey is not an indicator type Quell matches",
        "CVE-2021-44228": "MISP type vulnerability is not an indicator type Quell matches",
        "AS64500": "MISP type AS is not an indicator type Quell matches",
        "not-a-digest": "not a md5 digest (32 hex digits): 'not-a-digest'",
        "x": "MISP type text is not an indicator type Quell matches",
    }  # the deleted attribute and the deleted object are not counted
    assert parsed.unsupported[-1].where == "event 11111111-2222-4333-8444-555555555555, " + (
        "object 2 (domain-ip) attribute 2"
    )
    assert parsed.records[-1].stix_ids == ("indicator--22222222-3333-4444-8555-666666666666",)
    assert {"ip-dst", "md5", "link", "foo"} & MISP_TYPES == {"ip-dst", "md5", "link"}
    assert INDICATOR_MISP_TYPES <= MISP_TYPES


def test_times_and_sightings() -> None:
    event = _event(
        _attribute(
            "domain",
            "seen.evil.com",
            uuid="33333333-4444-4555-8666-777777777777",
            timestamp="1709290000",
            first_seen="2024-02-01T10:00:00.000000+00:00",
            Sighting=[
                {"type": "0", "date_sighting": "1709300000", "source": "honeypot", "uuid": "s1"},
                {"type": "1", "date_sighting": "1709300100", "uuid": "s2"},
                {
                    "type": "0",
                    "date_sighting": "1709300200",
                    "source": "",
                    "Organisation": {"name": "CIRCL"},
                    "uuid": "s3",
                },
            ],
        ),
        _attribute("domain", "dated.evil.com", timestamp="0"),
        Sighting=[
            # The same sighting listed again under the event is one sighting.
            {"type": "0", "date_sighting": "1709300000", "source": "honeypot", "uuid": "s1",
             "attribute_uuid": "33333333-4444-4555-8666-777777777777"},
            {"type": "0", "date_sighting": "1709400000", "uuid": "s4",
             "attribute_uuid": "33333333-4444-4555-8666-777777777777"},
        ],
    )  # fmt: skip
    parsed = parse_event(event)
    seen, dated = parsed.records
    assert seen.first_seen == datetime(2024, 2, 1, 10, tzinfo=UTC)
    assert seen.last_seen == datetime.fromtimestamp(1709290000, UTC)
    assert dated.first_seen == datetime(2024, 3, 1, tzinfo=UTC)  # the event date
    assert dated.last_seen is None
    assert seen.sightings == 3
    assert parsed.sightings == [
        ("dn:seen.evil.com", datetime.fromtimestamp(1709300000, UTC), "honeypot"),
        ("dn:seen.evil.com", datetime.fromtimestamp(1709300200, UTC), "CIRCL"),
        ("dn:seen.evil.com", datetime.fromtimestamp(1709400000, UTC), None),
    ]
    assert parse_time("1709300000") == datetime.fromtimestamp(1709300000, UTC)
    assert parse_time("2024-03-01 12:00:00") == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert parse_time("") is None
    with pytest.raises(IntelError, match="not a time"):
        parse_time("yesterday")
    # Valid ISO 8601 whose UTC time is out of range: refused (an import is a 422), not a crash.
    with pytest.raises(IntelError, match="not a time"):
        parse_time("9999-12-31T23:59:59-01:00")


@pytest.mark.requires("corpus")
def test_an_unknown_misp_type_refuses_the_event_and_leaves_the_store_unchanged(
    database: Database, clock: ManualClock
) -> None:
    store = IntelStore(database, clock)
    store.apply("misp", parse_event(_corpus("sighting_1.json")))
    before = store.counts()
    document = json.loads(_corpus("sighting_1.json"))
    document["Event"]["Attribute"].append(
        {"type": "domain", "value": "new.evil.com", "to_ids": True}
    )
    document["Event"]["Attribute"][2]["type"] = "foo-bar"
    with pytest.raises(IntelError) as caught:
        store.apply("misp", parse_event(json.dumps(document).encode()))
    message = caught.value.message
    assert "'foo-bar', which is not a MISP attribute type" in message
    assert "attribute 3 (5b6464ca-8c84-4c2d-95d9-d0350acd0835)" in message
    assert caught.value.details["type"] == "foo-bar"
    assert store.counts() == before
    assert store.lookup("domain", "new.evil.com") == []


def test_malformed_documents_are_refused() -> None:
    with pytest.raises(IntelError, match="not valid JSON"):
        parse_event(b"{not json")
    with pytest.raises(IntelError, match="not a MISP event"):
        parse_event(b'{"type": "bundle", "objects": []}')
    with pytest.raises(IntelError, match="Attribute is not a list"):
        parse_event({"Event": {"Attribute": {"type": "md5"}}})
    with pytest.raises(IntelError, match="attribute 1 has no type"):
        parse_event(_event({"value": "x"}))
    with pytest.raises(IntelError, match=r"attribute 1 \(md5\) has no value"):
        parse_event(_event({"type": "md5"}))
    with pytest.raises(IntelError, match="timestamp: not a time"):
        parse_event(_event(_attribute("md5", "a" * 32, timestamp="soon")))
    response = {"response": [_event(_attribute("md5", "a" * 32)), _event()["Event"]]}
    assert len(parse_event(response).records) == 1


# -- feeds ---------------------------------------------------------------------------------------


def _write_feed(directory: Path) -> dict[str, Any]:
    """A MISP feed of the corpus events: each as {"Event": …} under its uuid, and a manifest."""
    events = {
        SIGHTING_EVENT: json.loads(_corpus("sighting_1.json"))["Event"],
        MALWARE_EVENT: json.loads(_corpus("malware_exist.json"))["response"][0],
        RANDOM_EVENT: json.loads(_corpus("misp_event.json")),
        OBJECT_EVENT: json.loads(_corpus("event_obj_attr_tag.json")),
    }
    manifest: dict[str, Any] = {}
    for number, (uuid, event) in enumerate(events.items()):
        (directory / f"{uuid}.json").write_bytes(json.dumps({"Event": event}).encode())
        manifest[uuid] = {
            "info": event.get("info", ""),
            "Orgc": event.get("Orgc", {}),
            "Tag": event.get("Tag", []),
            "threat_level_id": event.get("threat_level_id", "4"),
            "timestamp": str(1_700_000_000 + number * 100),
        }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "hashes.csv").write_text("")
    return manifest


@pytest.mark.requires("corpus")
def test_a_feed_directory_imports_every_listed_event(
    database: Database, clock: ManualClock, tmp_path: Path
) -> None:
    manifest = _write_feed(tmp_path)
    store = IntelStore(database, clock)
    first = store.apply("misp-feed", parse_feed_dir(tmp_path))
    # The sum of the four events: 4 + 3 + 0 + 1 indicators, one expired, 5 unsupported.
    assert (first.added, first.expired, first.unsupported, first.sightings) == (8, 1, 5, 2)
    assert any(u.where.startswith(f"{RANDOM_EVENT}.json: ") for u in first.unsupported_items)
    again = store.apply("misp-feed", parse_feed_dir(tmp_path))
    assert (again.added, again.updated, again.unchanged, again.expired) == (0, 0, 8, 1)

    assert events_to_fetch(manifest, since_timestamp=None) == [
        SIGHTING_EVENT,
        MALWARE_EVENT,
        RANDOM_EVENT,
        OBJECT_EVENT,
    ]
    assert events_to_fetch(manifest, since_timestamp=1_700_000_100) == [RANDOM_EVENT, OBJECT_EVENT]
    assert events_to_fetch(manifest, since_timestamp=1_700_000_300) == []
    assert manifest_timestamp(manifest) == 1_700_000_300
    newer = parse_feed_dir(tmp_path, since_timestamp=1_700_000_200)
    assert [r.value for r in newer.records] == ["https://www.circl.lu"]


@pytest.mark.requires("corpus")
def test_a_feed_with_a_missing_event_file_is_refused(
    database: Database, clock: ManualClock, tmp_path: Path
) -> None:
    _write_feed(tmp_path)
    store = IntelStore(database, clock)
    store.apply("misp-feed", parse_event(_corpus("sighting_1.json")))
    before = store.counts()
    (tmp_path / f"{MALWARE_EVENT}.json").unlink()
    with pytest.raises(IntelError, match=f"lists event {MALWARE_EVENT}, but {MALWARE_EVENT}.json"):
        store.apply("misp-feed", parse_feed_dir(tmp_path))
    assert store.counts() == before


def test_malformed_feeds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IntelError, match="not a MISP feed directory"):
        parse_feed_dir(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"../../etc/passwd": {}}))
    with pytest.raises(IntelError, match="not an event uuid"):
        parse_feed_dir(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({SIGHTING_EVENT: {"timestamp": "x"}}))
    with pytest.raises(IntelError, match="has timestamp 'x'"):
        events_to_fetch(json.loads((tmp_path / "manifest.json").read_text()), since_timestamp=1)
    (tmp_path / "manifest.json").write_text(json.dumps({SIGHTING_EVENT: {}}))
    (tmp_path / f"{SIGHTING_EVENT}.json").write_text(json.dumps(_event()))
    with pytest.raises(IntelError, match=f"holds event 11111111-.*, not {SIGHTING_EVENT}"):
        parse_feed_dir(tmp_path)


def test_an_attribute_unticked_or_deleted_stops_what_it_made_and_nothing_else(
    database: Database, clock: ManualClock
) -> None:
    """Unticking to_ids (or deleting the attribute) is how an analyst clears a false positive
    in MISP: the indicator it made stops matching at the next pull (it used to stay live, the
    attribute merely skipped). The same value made by another event's attribute stays."""
    store = IntelStore(database, clock)
    fp = "aaaaaaaa-0000-4000-8000-000000000001"
    gone = "aaaaaaaa-0000-4000-8000-000000000002"
    other = _event(
        _attribute("ip-dst", "203.0.113.50", uuid="bbbbbbbb-0000-4000-8000-00000000000b")
    )
    other["Event"]["uuid"] = "22222222-2222-4333-8444-555555555555"

    def pull(**changes: Any) -> Any:
        event = _event(
            _attribute("domain", "benign.example", uuid=fp, **changes.get("fp", {})),
            _attribute("ip-dst", "198.51.100.77", uuid=gone, **changes.get("gone", {})),
            _attribute("ip-dst", "203.0.113.50", uuid="cccccccc-0000-4000-8000-00000000000c",
                       **changes.get("shared", {})),
        )  # fmt: skip
        return store.apply("misp", parse_event(event))

    assert pull().added == 3
    store.apply("misp", parse_event(other))  # another event says 203.0.113.50 too: it owns it now
    report = pull(fp={"to_ids": False}, gone={"deleted": True}, shared={"to_ids": False})
    assert report.withdrawn == 2
    assert store.lookup("domain", "benign.example") == []
    assert store.lookup("ipv4", "198.51.100.77") == []
    assert len(store.lookup("ipv4", "203.0.113.50")) == 1  # the other event's attribute holds
    assert pull(fp={"to_ids": False}, gone={"deleted": True}).withdrawn == 0  # once
    again = pull()  # ticked again, undeleted: live again
    assert again.updated >= 2
    assert len(store.lookup("domain", "benign.example")) == 1
    assert len(store.lookup("ipv4", "198.51.100.77")) == 1
