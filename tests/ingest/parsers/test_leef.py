"""The LEEF parser: IBM QRadar's published examples, delimiters, devTime, and arbitrary input.

The headers, attribute lists, syslog headers and devTimeFormat patterns are those of IBM's
"LEEF event components", "Predefined LEEF event attributes" and "Custom event date format".
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quell.clock import ManualClock
from quell.ingest.model import Alert, Endpoint, Severity
from quell.ingest.parsers import parser_class
from quell.ingest.parsers.base import ParseError, RecordKind
from quell.ingest.parsers.leef import LeefParser, java_date_regex, leef_severity

RECEIPT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
IBM_ATTRIBUTES = "\t".join(
    [
        "src=192.0.2.0",
        "dst=172.50.123.1",
        "sev=5",
        "cat=anomaly",
        "srcPort=81",
        "dstPort=21",
        "usrName=joe.black",
    ]
)


@pytest.fixture
def parser() -> LeefParser:
    return LeefParser({"missing_time": "receipt"}, clock=ManualClock(RECEIPT))


def parse(parser: LeefParser, line: str) -> Alert:
    result = parser.parse(line)
    assert isinstance(result, Alert)
    return result


def test_the_registry_names_this_parser() -> None:
    assert parser_class("leef") is LeefParser
    assert LeefParser.record_kind is RecordKind.TEXT


def test_leef_1_with_ibm_attributes(parser: LeefParser) -> None:
    alert = parse(parser, f"LEEF:1.0|Microsoft|MSExchange|4.0 SP1|15345|{IBM_ATTRIBUTES}")
    assert alert.vendor == "Microsoft"
    assert alert.product == "MSExchange"
    assert alert.rule_uid == "15345"
    assert alert.title == "MSExchange 15345 (anomaly)"
    assert alert.category == "anomaly"
    assert alert.severity is Severity.MEDIUM
    assert alert.src == Endpoint(ip="192.0.2.0", port=81)
    assert alert.dst == Endpoint(ip="172.50.123.1", port=21)
    assert alert.user == "joe.black"
    assert alert.extra["leef_version"] == "1.0"
    assert alert.extra["device_version"] == "4.0 SP1"
    assert alert.extra["leef_severity"] == "5"
    assert "attributes" not in alert.extra
    assert "delimiter" not in alert.extra  # the default tab


def test_leef_2_with_a_caret_delimiter(parser: LeefParser) -> None:
    alert = parse(
        parser,
        "LEEF:2.0|Lancope|StealthWatch|1.0|41|^|src=10.0.1.8^dst=10.0.0.5^sev=5^srcPort=81^"
        "dstPort=21",
    )
    assert alert.title == "StealthWatch 41"
    assert alert.src == Endpoint(ip="10.0.1.8", port=81)
    assert alert.dst == Endpoint(ip="10.0.0.5", port=21)
    assert alert.extra["delimiter"] == "^"


@pytest.mark.parametrize(
    ("field", "delimiter"),
    [("^", "^"), ("x5E", "^"), ("0x5E", "^"), ("x5e", "^"), ("x09", "\t"), ("x7c", "|")],
)
def test_leef_2_delimiters_as_a_character_or_in_hex(
    parser: LeefParser, field: str, delimiter: str
) -> None:
    attributes = delimiter.join(["src=10.0.1.8", "proto=TCP", "url=http://a.test/?q=1"])
    alert = parse(parser, f"LEEF:2.0|Vendor|Product|Version|EventID|{field}|{attributes}")
    assert alert.src == Endpoint(ip="10.0.1.8")
    assert alert.url == "http://a.test/?q=1"
    assert alert.extra["attributes"] == {"proto": "TCP"}


def test_leef_2_without_a_delimiter_field_uses_tabs(parser: LeefParser) -> None:
    empty = parse(parser, "LEEF:2.0|V|P|1|ID||src=10.0.0.1\tdst=10.0.0.2")
    assert empty.dst == Endpoint(ip="10.0.0.2")
    missing = parse(parser, "LEEF:2.0|V|P|1|ID|src=10.0.0.1\tdst=10.0.0.2")
    assert missing.src == Endpoint(ip="10.0.0.1")


def test_an_equals_sign_cannot_be_the_delimiter(parser: LeefParser) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse("LEEF:2.0|V|P|1|ID|x3D|a=b")
    assert caught.value.field == "delimiter"


def test_the_category_refines_the_event_id_in_the_title(parser: LeefParser) -> None:
    # IBM's "cat" examples
    assert parse(parser, "LEEF:1.0|Microsoft|Exchange|2013|Login Event|cat=Failed").title == (
        "Login Event (Failed)"
    )
    assert parse(parser, "LEEF:1.0|Microsoft|Endpoint|2015|Conficker_worm|cat=Detected").title == (
        "Conficker_worm (Detected)"
    )
    assert parse(parser, "LEEF:1.0|Microsoft|Exchange|2013|Login Event|").title == "Login Event"
    assert parse(parser, "LEEF:1.0|Microsoft|Exchange|2013||").title == "Exchange"


@pytest.mark.parametrize(
    "header",
    [
        "<13>Jan 18 11:07:53 192.168.1.1",
        "Jan 18 11:07:53 192.168.1.1",
        "<13>1 2019-01-18T11:07:53.520Z 192.168.1.1",
        "<133>1 2019-01-18T18:07:53.520+07:00 192.168.1.1",
    ],
)
def test_ibm_syslog_headers_give_host_and_time(header: str) -> None:
    parser = LeefParser({}, clock=ManualClock(datetime(2019, 2, 1, tzinfo=UTC)))
    alert = parse(parser, f"{header} LEEF:1.0|Microsoft|MSExchange|4.0 SP1|15345|{IBM_ATTRIBUTES}")
    assert alert.host == Endpoint(ip="192.168.1.1")
    assert alert.time.replace(microsecond=0) == datetime(2019, 1, 18, 11, 7, 53, tzinfo=UTC)
    assert alert.extra["time_source"] == "syslog"
    assert alert.extra["syslog"]["hostname"] == "192.168.1.1"


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        # IBM's suggested devTimeFormat patterns
        (
            "devTime=Jun 06 2015 16:07:36\tdevTimeFormat=MMM dd yyyy HH:mm:ss",
            datetime(2015, 6, 6, 16, 7, 36, tzinfo=UTC),
        ),
        (
            "devTime=Jun 06 2015 16:07:36.300\tdevTimeFormat=MMM dd yyyy HH:mm:ss.SSS",
            datetime(2015, 6, 6, 16, 7, 36, 300000, tzinfo=UTC),
        ),
        (
            "devTimeFormat=MMM dd yyyy HH:mm:ss.SSS z\tdevTime=Jun 06 2015 02:07:36.300 GMT",
            datetime(2015, 6, 6, 2, 7, 36, 300000, tzinfo=UTC),
        ),
        # epoch values need no format (10 or 13 digits)
        ("devTime=1433606856", datetime(2015, 6, 6, 16, 7, 36, tzinfo=UTC)),
        ("devTime=1433606856300", datetime(2015, 6, 6, 16, 7, 36, 300000, tzinfo=UTC)),
        (
            "devTime=1433606856\tdevTimeFormat=MMM dd yyyy HH:mm:ss",
            datetime(2015, 6, 6, 16, 7, 36, tzinfo=UTC),
        ),
        # other Java patterns
        (
            "devTime=2015-06-06T18:07:36.3+02:00\tdevTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
            datetime(2015, 6, 6, 16, 7, 36, 300000, tzinfo=UTC),
        ),
        (
            "devTime=06/06/15 04:07:36 PM -0000\tdevTimeFormat=MM/dd/yy hh:mm:ss a Z",
            datetime(2015, 6, 6, 16, 7, 36, tzinfo=UTC),
        ),
        (
            "devTime=Sat, 6 Jun 2015 12:07:36 EDT\tdevTimeFormat=EEE, d MMM yyyy HH:mm:ss z",
            datetime(2015, 6, 6, 16, 7, 36, tzinfo=UTC),
        ),
        (
            "devTime=Dec 31 23:00:00\tdevTimeFormat=MMM dd HH:mm:ss",
            datetime(2025, 12, 31, 23, 0, tzinfo=UTC),
        ),
        # without a format: CEF's date forms and ISO 8601
        ("devTime=Jun 06 2015 16:07:36", datetime(2015, 6, 6, 16, 7, 36, tzinfo=UTC)),
        ("devTime=2015-06-06T16:07:36Z", datetime(2015, 6, 6, 16, 7, 36, tzinfo=UTC)),
    ],
)
def test_dev_time_forms(parser: LeefParser, attributes: str, expected: datetime) -> None:
    alert = parse(parser, f"LEEF:1.0|V|P|1|ID|src=10.0.0.1\t{attributes}")
    assert alert.time == expected
    assert alert.extra["time_source"] == "event"
    assert "attributes" not in alert.extra  # devTime and devTimeFormat are taken


def test_dev_time_without_zone_uses_the_timezone_option() -> None:
    parser = LeefParser({"timezone": "Asia/Tokyo"}, clock=ManualClock(RECEIPT))
    alert = parse(parser, "LEEF:1.0|V|P|1|ID|devTime=Jun 06 2015 16:07:36")
    assert alert.time == datetime(2015, 6, 6, 7, 7, 36, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ("devTime=soon", "devTime"),
        ("devTime=Jun 31 2015 16:07:36\tdevTimeFormat=MMM dd yyyy HH:mm:ss", "devTime"),
        ("devTime=Jun 06 2015\tdevTimeFormat=MMM dd yyyy GGG", "devTimeFormat"),
        ("devTime=2015 2016\tdevTimeFormat=yyyy yyyy", "devTimeFormat"),
        ("devTime=x\tdevTimeFormat=" + "y" * 65, "devTimeFormat"),
    ],
)
def test_a_bad_dev_time_is_refused_naming_the_field(
    parser: LeefParser, attributes: str, field: str
) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse(f"LEEF:1.0|V|P|1|ID|{attributes}")
    assert caught.value.field == field


def test_a_record_without_time_is_refused_by_default() -> None:
    strict = LeefParser({}, clock=ManualClock(RECEIPT))
    with pytest.raises(ParseError, match="no time") as caught:
        strict.parse(f"LEEF:1.0|Microsoft|MSExchange|4.0 SP1|15345|{IBM_ATTRIBUTES}")
    assert caught.value.field == "devTime"


@pytest.mark.parametrize(
    ("sev", "expected"),
    [
        *[(str(n), Severity.LOW) for n in (1, 2, 3)],
        *[(str(n), Severity.MEDIUM) for n in (4, 5, 6)],
        ("7", Severity.HIGH),
        ("8", Severity.HIGH),
        ("9", Severity.CRITICAL),
        ("10", Severity.CRITICAL),
        ("0", Severity.UNKNOWN),
        ("11", Severity.UNKNOWN),
        ("high", Severity.UNKNOWN),
        ("", Severity.UNKNOWN),
    ],
)
def test_every_severity_form(parser: LeefParser, sev: str, expected: Severity) -> None:
    assert leef_severity(sev) is expected
    assert parse(parser, f"LEEF:1.0|V|P|1|ID|sev={sev}").severity is expected
    assert parse(parser, "LEEF:1.0|V|P|1|ID|src=10.0.0.1").severity is Severity.UNKNOWN


def test_space_separated_attributes_are_read_like_a_cef_extension(parser: LeefParser) -> None:
    # IBM's own attribute example, as it renders on a web page (tabs became spaces)
    alert = parse(
        parser,
        "LEEF:1.0|V|P|1|ID|src=192.0.2.0 dst=172.50.123.1 sev=5 cat=anomaly srcPort=81 "
        "dstPort=21 usrName=joe.black",
    )
    assert alert.src == Endpoint(ip="192.0.2.0", port=81)
    assert alert.user == "joe.black"
    assert alert.extra["delimiter"] == " "


def test_values_keep_equals_signs_and_other_keys_are_kept(parser: LeefParser) -> None:
    alert = parse(
        parser,
        "LEEF:1.0|V|P|1|ID|url=https://x.test/a?b=c&d=e\tidentSrc=10.9.9.9\t"
        "identHostName=ws-17\taccountName=svc_backup\tproto=UDP\tsrcPort=http\tstray text\t\t",
    )
    assert alert.url == "https://x.test/a?b=c&d=e"
    assert alert.user == "svc_backup"
    assert alert.extra["attributes"] == {
        "identSrc": "10.9.9.9",
        "identHostName": "ws-17",
        "proto": "UDP",
        "srcPort": "http",
    }
    assert alert.extra["unparsed"] == "stray text"


@pytest.mark.parametrize(
    "line",
    ["LEEF:1.0|V|P|1", "LEEF:|V|P|1|ID|", "leef:1.0|V|P|1|ID|", "no header", "", "LEEF:1.0"],
)
def test_malformed_headers_are_refused(parser: LeefParser, line: str) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse(line)
    assert caught.value.field == "header"


def test_java_patterns_compile_once() -> None:
    assert java_date_regex("MMM dd yyyy HH:mm:ss") is java_date_regex("MMM dd yyyy HH:mm:ss")


# -- arbitrary input --------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "LEEF:1.0|", "LEEF:2.0|", "|", "^", "x5E", "0x", "xD800", "x3D", "\t", " ", "=", "==",
        "src=", "srcPort=", "sev=", "devTime=", "devTimeFormat=", "MMM dd yyyy", "''", "'T'",
        "GGG", "yyyy", "SSS", "z", "X", "a", "Jun 06 2015 16:07:36", "1433606856300",
        "99999999999999", "10.0.0.1", "fe80::1%eth0", "cat=", "<13>", "Jan 18 11:07:53 h ", "é",
    ]
)  # fmt: skip
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_parse_errors(parser: LeefParser, text: str) -> None:
    with contextlib.suppress(ParseError):
        parser.parse(text)


@_SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text_raises_nothing_but_parse_error(text: str) -> None:
    _only_parse_errors(LeefParser({"missing_time": "receipt"}), text)
    _only_parse_errors(LeefParser(), "LEEF:2.0|" + text)


@_SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_nothing_but_parse_error(data: bytes) -> None:
    _only_parse_errors(LeefParser(), data.decode("utf-8", errors="replace"))


@_SETTINGS
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_leef_shaped_noise_raises_nothing_but_parse_error(text: str) -> None:
    _only_parse_errors(LeefParser({"missing_time": "receipt"}), text)
    _only_parse_errors(LeefParser(), "LEEF:2.0|V|P|1|ID|^|devTime=" + text)
