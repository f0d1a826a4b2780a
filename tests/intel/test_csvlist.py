"""CSV indicator files and plain lists: the corpus CSVs, abuse.ch layouts, mappings, lists."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quell.clock import ManualClock
from quell.intel.csvlist import detect, parse_csv, parse_list, parse_mapping
from quell.intel.model import IndicatorType, IntelError, MatchKind, Tlp, keyed
from quell.intel.store import IntelStore
from quell.store.database import Database
from tests.fixtures.requirements import corpus_path


def _corpus(name: str) -> bytes:
    return (corpus_path() / "misp" / name).read_bytes()


def _keys(data: bytes, **options: object) -> list[str]:
    return [keyed(r)[0] for r in parse_csv(data, **options).records]  # type: ignore[arg-type]


@pytest.mark.requires("corpus")
def test_valid_fieldnames_import_without_a_mapping(database: Database, clock: ManualClock) -> None:
    parsed = parse_csv(_corpus("valid_fieldnames.csv"), origin="valid_fieldnames.csv")
    # Header "md5, sha1, sha256" and three rows: three hashes a row.
    assert [r.type for r in parsed.records[:3]] == [
        IndicatorType.MD5,
        IndicatorType.SHA1,
        IndicatorType.SHA256,
    ]
    assert parsed.records[0].value == "644087ccca16d2a728ef7685a4106f09"  # no leading space
    assert parsed.records[4].origin == "valid_fieldnames.csv: line 3, sha1"
    store = IntelStore(database, clock)
    first = store.apply("hashes", parsed)
    assert (first.added, first.unsupported) == (9, 0)
    again = store.apply("hashes", parse_csv(_corpus("valid_fieldnames.csv")))
    assert (again.added, again.updated, again.unchanged) == (0, 0, 9)
    assert (
        len(
            store.lookup(
                "sha256", "5F815B8A8E77731C9CA2B3A07A27F880EF24D54E458D77BDABBBAF2269FE96C3"
            )
        )
        == 1
    )


@pytest.mark.requires("corpus")
def test_invalid_fieldnames_are_refused_and_a_mapping_reads_them(
    database: Database, clock: ManualClock
) -> None:
    with pytest.raises(IntelError) as caught:
        parse_csv(_corpus("invalid_fieldnames.csv"))
    message = caught.value.message
    assert "'SHA1' (names are case-sensitive: did you mean 'sha1'?)" in message
    assert "'fileName'" in message
    assert "'size'" in message
    assert "give a mapping" in message
    assert message.endswith("e.g. SHA1=sha1,fileName=skip,size=skip")
    assert caught.value.details["columns"] == ["SHA1", "fileName", "size"]

    mapping = parse_mapping("SHA1=sha1,fileName=skip,size=skip")
    store = IntelStore(database, clock)
    report = store.apply("hashes", parse_csv(_corpus("invalid_fieldnames.csv"), mapping=mapping))
    assert (report.added, report.unsupported) == (10, 0)
    assert len(store.lookup("sha1", "2a030cc6d84d5785f5e84d0f5888a411d4b06d01")) == 1
    # The same by index; the other columns left to "*".
    by_index = parse_csv(_corpus("invalid_fieldnames.csv"), mapping={1: "sha1", "*": "skip"})
    assert len(by_index.records) == 10
    # A MISP type Quell does not match counts its values unsupported.
    with_names = parse_csv(
        _corpus("invalid_fieldnames.csv"),
        mapping={"SHA1": "sha1", "fileName": "filename", "size": "size-in-bytes"},
    )
    assert (len(with_names.records), len(with_names.unsupported)) == (10, 20)
    assert with_names.unsupported[0].reason == (
        "MISP type filename is not an indicator type Quell matches"
    )


FEODO = b"""\
################################################################
# abuse.ch Feodo Tracker Botnet C2 IP Blocklist (CSV)          #
# Last updated: 2024-05-02 08:14:05 UTC                        #
#                                                              #
# Terms Of Use: https://feodotracker.abuse.ch/blocklist/       #
################################################################
#
# first_seen_utc,dst_ip,dst_port,c2_status,last_online,malware
#
2021-01-17 07:30:05,51.178.161.32,4643,online,2024-05-02,Pikabot
2021-03-09 17:01:30,203.0.113.300,443,offline,,QakBot
2023-11-02 12:16:08,2001:db8::77,8080,online,2024-05-01,Dridex
# Number of entries: 3
"""

URLHAUS = b"""\
################################################################
# abuse.ch URLhaus Database Dump (CSV - recent URLs only)      #
################################################################
#
# id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,reporter
"2843911","2024-05-02 08:12:07","http://117.215.209.7:34567/i","online","2024-05-02 08:12:07","malware_download","32-bit,elf,mips,Mozi","https://urlhaus.abuse.ch/url/2843911/","geenensp"
"2843910","2024-05-02 08:11:05","https://evil-cdn.com/a/b.exe?x=1","offline","None","malware_download","exe","https://urlhaus.abuse.ch/url/2843910/","abuse_ch"
"2843909","2024-05-02 08:10:04","not a url","online","","malware_download","","https://urlhaus.abuse.ch/url/2843909/","x"
"""


def test_an_abuse_ch_feodo_blocklist_reads_its_comment_header(
    database: Database, clock: ManualClock
) -> None:
    mapping = parse_mapping(
        "first_seen_utc=first_seen,dst_ip=ip-dst,last_online=last_seen,malware=tags,*=skip"
    )
    parsed = parse_csv(FEODO, header="comment", mapping=mapping, confidence=80, tags=["feodo"])
    pika, dridex = parsed.records
    assert (pika.type, pika.value, pika.confidence) == (IndicatorType.IPV4, "51.178.161.32", 80)
    assert pika.first_seen == datetime(2021, 1, 17, 7, 30, 5, tzinfo=UTC)
    assert pika.last_seen == datetime(2024, 5, 2, tzinfo=UTC)
    assert pika.tags == ("feodo", "Pikabot")
    assert dridex.type is IndicatorType.IPV6
    (bad,) = parsed.unsupported
    assert bad.where == "line 11"
    assert "not an IP address" in bad.reason
    store = IntelStore(database, clock)
    report = store.apply("feodo", parsed)
    assert (report.added, report.unsupported) == (2, 1)
    assert store.lookup("ipv4", "51.178.161.32")[0].tags == ("feodo", "Pikabot")
    # Without the option, the first data line is taken as the header, and refused.
    with pytest.raises(IntelError, match="'2021-01-17 07:30:05'"):
        parse_csv(FEODO, mapping=mapping)


def test_an_abuse_ch_urlhaus_dump_with_quoted_fields() -> None:
    parsed = parse_csv(
        URLHAUS,
        header="comment",
        mapping={"url": "url", "dateadded": "first_seen", "tags": "tags", "*": "skip"},
        origin="urlhaus",
    )
    assert [keyed(r)[0] for r in parsed.records] == [
        "url:http://117.215.209.7:34567/i",
        "url:https://evil-cdn.com/a/b.exe?x=1",
    ]
    assert parsed.records[0].tags == ("32-bit", "elf", "mips", "Mozi")
    assert parsed.records[1].tags == ("exe",)
    (bad,) = parsed.unsupported
    assert (bad.where, bad.reason) == ("urlhaus: line 8", "not a URL: 'not a url'")


def test_a_type_column_and_auto_detection() -> None:
    threatfox = (
        b'# "first_seen_utc","ioc_value","ioc_type","confidence_level","tags"\n'
        b'"2024-05-01 10:00:00","198.51.100.4:443","ip:port","75","cobaltstrike"\n'
        b'"2024-05-01 10:00:01","bad-domain.com","domain","100",""\n'
        b'"2024-05-01 10:00:02","' + b"f" * 64 + b'","sha256_hash","50","x"\n'
        b'"2024-05-01 10:00:03","whatever","weird_type","50",""\n'
        b'"2024-05-01 10:00:04","hxxp://x.com","url","high",""\n'
    )
    parsed = parse_csv(
        threatfox,
        header="comment",
        mapping={
            "first_seen_utc": "first_seen",
            "ioc_value": "value",
            "ioc_type": "type",
            "confidence_level": "confidence",
        },
    )
    assert [(keyed(r)[0], r.confidence) for r in parsed.records] == [
        ("ip:198.51.100.4", 75),
        ("dn:bad-domain.com", 100),
        ("sha256:" + "f" * 64, 50),
    ]
    assert [(u.where, u.reason) for u in parsed.unsupported] == [
        ("line 5", "ioc_type: unknown indicator type 'weird_type'"),
        ("line 6", "confidence_level: a confidence is 0 to 100, not 'high'"),
    ]
    misp_export = (
        b"uuid,type,value,to_ids,comment\n"
        b"u1,ip-dst,203.0.113.80,1,c2\n"
        b"u2,domain,context.com,0,seen nearby\n"
        b"u3,link,https://blog.example/,1,\n"
    )
    parsed = parse_csv(misp_export, mapping={"uuid": "skip"})
    assert [(r.value, r.description) for r in parsed.records] == [("203.0.113.80", "c2")]
    assert [u.reason for u in parsed.unsupported] == [
        "to_ids is false: MISP marks it context, not a detection",
        "MISP type link is not an indicator type Quell matches",
    ]
    auto = b"value,tlp\n10.1.2.0/24,amber\nhxxps://evil[.]com/x,red\n" + b"a" * 40 + b",\n"
    parsed = parse_csv(auto, default_type="auto")
    assert [(r.type, r.tlp) for r in parsed.records] == [
        (IndicatorType.IPV4, Tlp.AMBER),
        (IndicatorType.URL, Tlp.RED),
        (IndicatorType.SHA1, Tlp.CLEAR),
    ]
    assert keyed(parsed.records[0])[2] is MatchKind.CIDR
    assert detect("Phish@Evil.com") == [(IndicatorType.EMAIL, "Phish@Evil.com")]
    assert detect("evil.com") == [(IndicatorType.DOMAIN, "evil.com")]
    assert detect("invoice.pdf") == []
    assert detect("abc123") == []


def test_rows_that_do_not_fit_are_unsupported_with_their_line() -> None:
    data = b"md5,first_seen,confidence\n" + b"a" * 32 + b",2024-01-01,90\n"
    data += b"b" * 32 + b",tomorrow,90\n"  # line 3
    data += b"c" * 32 + b",2024-01-01\n"  # line 4
    data += b",2024-01-01,90\n"  # line 5
    data += b"# a comment\n\n"
    data += b"d" * 31 + b",2024-01-01,90\n"  # line 8
    parsed = parse_csv(data)
    assert [r.value for r in parsed.records] == ["a" * 32]
    assert [(u.where, u.reason) for u in parsed.unsupported] == [
        ("line 3", "first_seen: not a time: 'tomorrow'"),
        ("line 4", "2 fields where the header has 3"),
        ("line 5", "no indicator value on the line"),
        ("line 8", f"not a md5 digest (32 hex digits): '{'d' * 31}'"),
    ]


def test_headerless_files_semicolons_and_mapping_errors() -> None:
    data = b"203.0.113.9;2024-02-02T10:00:00Z\n198.51.100.0/24;1706868000\n"
    parsed = parse_csv(data, header="none", delimiter=";", mapping={1: "ip-dst", 2: "last_seen"})
    assert [keyed(r)[0] for r in parsed.records] == ["ip:203.0.113.9", "net:198.51.100.0/24"]
    assert parsed.records[1].last_seen == datetime.fromtimestamp(1706868000, UTC)
    assert _keys(b"evil.com\n", header="none", default_type="domain") == ["dn:evil.com"]
    with pytest.raises(IntelError, match="without a header needs a mapping"):
        parse_csv(data, header="none", delimiter=";")
    with pytest.raises(IntelError, match="names column 'ip', which is not in the header"):
        parse_csv(b"md5\n" + b"a" * 32 + b"\n", mapping={"ip": "ipv4"})
    with pytest.raises(IntelError, match="names column 4, but the header has 1 columns"):
        parse_csv(b"md5\n" + b"a" * 32 + b"\n", mapping={"4": "ipv4"})
    with pytest.raises(IntelError, match="no column holds indicator values"):
        parse_csv(b"first_seen,tags\n2024-01-01,x\n")
    with pytest.raises(IntelError, match="a value column needs its type"):
        parse_csv(b"value\nx\n")
    with pytest.raises(IntelError, match="no comment line before the data"):
        parse_csv(b"md5\n", header="comment")
    assert parse_csv(b"# nothing yet\n").records == []
    assert parse_csv(b"md5,sha1\n").records == []
    with pytest.raises(IntelError, match="line 2 is longer than 64 KiB"):
        parse_csv(b"url\nhttp://x.com/" + b"a" * 70_000 + b"\n")
    with pytest.raises(IntelError, match="line 2 is not UTF-8"):
        parse_csv(b"md5\n\xff\xfe\n")
    with pytest.raises(IntelError, match="line 2: not CSV"):
        parse_csv(b'url,comment\nhttp://x.com/,"a"b\n')


def test_parse_mapping() -> None:
    assert parse_mapping(" SHA1 = sha1 , 3=skip,*=skip,") == {
        "SHA1": "sha1",
        "3": "skip",
        "*": "skip",
    }
    assert parse_mapping("a=b=ip-dst") == {"a=b": "ip-dst"}  # the target is after the last =
    with pytest.raises(IntelError, match="'SHA1' is not column=target"):
        parse_mapping("SHA1")
    with pytest.raises(IntelError, match="unknown target 'sha-1'"):
        parse_mapping("SHA1=sha-1")
    with pytest.raises(IntelError, match="indexes start at 1"):
        parse_mapping("0=md5")
    with pytest.raises(IntelError, match="names column 'a' twice"):
        parse_mapping("a=md5,a=sha1")
    with pytest.raises(IntelError, match="the mapping is empty"):
        parse_mapping(" , ")


def test_a_plain_list_with_cidrs_and_comments(database: Database, clock: ManualClock) -> None:
    drop = b"""\
; Spamhaus DROP List 2024/05/02 - (c) 2024 The Spamhaus Project
; Last-Modified: Thu, 02 May 2024 07:09:30 GMT
1.10.16.0/20 ; SBL256894
1.19.0.0/16 ; SBL434604
# a hash comment

2001:db8:1000::/36 ; SBL1
203.0.113.5
evil.com # known bad
198.51.100.7 198.51.100.8
not_a_thing
"""
    parsed = parse_list(drop, tlp=Tlp.GREEN, tags=["drop"], origin="drop.txt")
    assert [keyed(r)[0] for r in parsed.records] == [
        "net:1.10.16.0/20",
        "net:1.19.0.0/16",
        "net:2001:db8:1000::/36",
        "ip:203.0.113.5",
        "dn:evil.com",
    ]
    assert {r.tlp for r in parsed.records} == {Tlp.GREEN}
    assert [(u.where, u.reason) for u in parsed.unsupported] == [
        ("drop.txt: line 10", "more than one value on the line"),
        (
            "drop.txt: line 11",
            "not an IP address, network, URL, e-mail address, hash or domain name",
        ),
    ]
    store = IntelStore(database, clock)
    report = store.apply("drop", parsed)
    assert (report.added, report.unsupported) == (5, 2)
    assert [h.value for h in store.lookup("ipv4", "1.19.200.1")] == ["1.19.0.0/16"]
    again = store.apply("drop", parse_list(drop, tlp=Tlp.GREEN, tags=["drop"]))
    assert (again.added, again.unchanged) == (0, 5)

    urls = parse_list(b"http://a.com/x#frag\nhttps://b.com/\n", type="url")
    assert [keyed(r)[0] for r in urls.records] == ["url:http://a.com/x", "url:https://b.com/"]
    hashes = parse_list(b"filename.exe|" + b"a" * 32 + b"\n", type="filename|md5")
    assert [r.value for r in hashes.records] == ["a" * 32]
    assert parse_list(b"x\n", type="regkey").unsupported[0].reason == (
        "MISP type regkey is not an indicator type Quell matches"
    )
    with pytest.raises(IntelError, match="unknown indicator type 'ip'"):
        parse_list(b"1.2.3.4\n", type="ip")
