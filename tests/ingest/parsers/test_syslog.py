"""The syslog parser: RFC 5424 and RFC 3164 examples, year inference, delegation, bad input."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quell.clock import ManualClock
from quell.errors import InvalidInput
from quell.ingest.model import Alert, Endpoint, Severity
from quell.ingest.parsers import build_parser, parser_class
from quell.ingest.parsers.base import NotAnAlert, ParseError, RecordKind
from quell.ingest.parsers.syslog import SyslogParser, parse_syslog

RECEIPT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BOM = "\ufeff"


@pytest.fixture
def parser() -> SyslogParser:
    return SyslogParser({}, clock=ManualClock(RECEIPT))


def parse(parser: SyslogParser, line: str) -> Alert:
    result = parser.parse(line)
    assert isinstance(result, Alert)
    return result


def test_the_registry_names_this_parser() -> None:
    assert parser_class("syslog") is SyslogParser
    assert SyslogParser.record_kind is RecordKind.TEXT


# -- RFC 5424 ---------------------------------------------------------------------------------


def test_rfc5424_example_1_no_structured_data(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        f"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - {BOM}'su root' "
        "failed for lonvick on /dev/pts/8",
    )
    assert alert.time == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert alert.title == "su: 'su root' failed for lonvick on /dev/pts/8"
    assert alert.description == "'su root' failed for lonvick on /dev/pts/8"  # BOM removed
    assert alert.severity is Severity.CRITICAL  # syslog severity 2
    assert alert.host == Endpoint(hostname="mymachine.example.com")
    assert alert.product == "su"
    assert alert.rule_uid == "ID47"
    assert alert.extra["time_source"] == "syslog"
    assert alert.extra["syslog"] == {
        "protocol": "rfc5424",
        "facility": 4,
        "facility_name": "auth",
        "severity": 2,
        "severity_name": "critical",
        "time": "2003-10-11T22:14:15.003000+00:00",
        "hostname": "mymachine.example.com",
        "app_name": "su",
        "msgid": "ID47",
    }


def test_rfc5424_example_2_offset_and_microseconds(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make "
        "the do-nuts.",
    )
    assert alert.time == datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=UTC)
    assert alert.host == Endpoint(ip="192.0.2.1")
    assert alert.severity is Severity.LOW  # notice
    assert alert.extra["syslog"]["facility_name"] == "local4"
    assert alert.extra["syslog"]["procid"] == "8710"
    assert "msgid" not in alert.extra["syslog"]


def test_rfc5424_example_3_structured_data_and_message(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
        f"{BOM}An application event log entry...",
    )
    assert alert.title == "evntslog: An application event log entry..."
    assert alert.extra["syslog"]["structured_data"] == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"}
    }


def test_rfc5424_example_4_structured_data_only(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
        '[examplePriority@32473 class="high"]',
    )
    assert alert.title == "evntslog"
    assert alert.description is None
    assert alert.extra["syslog"]["structured_data"]["examplePriority@32473"] == {"class": "high"}


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        # RFC 5424 section 6.2.3.1, examples 1 to 4
        ("1985-04-12T23:20:50.52Z", datetime(1985, 4, 12, 23, 20, 50, 520000, tzinfo=UTC)),
        ("1985-04-12T19:20:50.52-04:00", datetime(1985, 4, 12, 23, 20, 50, 520000, tzinfo=UTC)),
        ("2003-10-11T22:14:15.003Z", datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)),
        ("2003-08-24T05:14:15.000003-07:00", datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=UTC)),
        # example 5 is invalid for more than six digits: read leniently, cut to microseconds
        ("2003-08-24T05:14:15.000000003-07:00", datetime(2003, 8, 24, 12, 14, 15, tzinfo=UTC)),
    ],
)
def test_rfc5424_timestamps(parser: SyslogParser, timestamp: str, expected: datetime) -> None:
    assert parse(parser, f"<13>1 {timestamp} host app - - - hello").time == expected


@pytest.mark.parametrize(
    "timestamp", ["2003-10-11 22:14:15Z", "2003-13-11T22:14:15Z", "1990-12-31T23:59:60Z"]
)
def test_rfc5424_bad_timestamps_are_refused(parser: SyslogParser, timestamp: str) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse(f"<13>1 {timestamp} host app - - - hello")
    assert caught.value.field == "timestamp"


def test_structured_data_escapes_and_repeated_names(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        r'<13>1 2003-10-11T22:14:15Z h a - - [id@1 q="say \"hi\"" b="c\\d" k="[x\]" w="C:\win"'
        r' r="1" r="2"] msg',
    )
    assert alert.extra["syslog"]["structured_data"] == {
        # \" \\ \] are escapes; any other backslash stays (RFC 5424 6.3.3)
        "id@1": {"q": 'say "hi"', "b": "c\\d", "k": "[x]", "w": "C:\\win", "r": ["1", "2"]}
    }


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('<13>1 2003-10-11T22:14:15Z h a - - [id@1 q="unterminated] msg', "structured_data"),
        ("<13>1 2003-10-11T22:14:15Z h a - - {json} msg", "structured_data"),
        ('<13>1 2003-10-11T22:14:15Z h a - - [id@1 a="b"]msg', "structured_data"),
        ("<192>1 2003-10-11T22:14:15Z h a - - - msg", "pri"),
        ("<999>Oct 11 22:14:15 mymachine su: hi", "pri"),
    ],
)
def test_malformed_rfc5424_is_refused(parser: SyslogParser, line: str, field: str) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse(line)
    assert caught.value.field == field


def test_nil_values_everywhere() -> None:
    line = "<14>1 - - - - - -"
    with pytest.raises(ParseError, match="no time"):
        SyslogParser({}).parse(line)
    alert = parse(SyslogParser({"missing_time": "receipt"}, clock=ManualClock(RECEIPT)), line)
    assert alert.time == RECEIPT
    assert alert.extra["time_source"] == "receipt"
    assert alert.host is None
    assert alert.title == "syslog message"
    assert alert.severity is Severity.INFORMATIONAL
    assert alert.extra["syslog"] == {
        "protocol": "rfc5424",
        "facility": 1,
        "facility_name": "user",
        "severity": 6,
        "severity_name": "informational",
    }


# -- RFC 3164 ---------------------------------------------------------------------------------


def test_rfc3164_example_1(parser: SyslogParser) -> None:
    alert = parse(
        parser, "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"
    )
    assert alert.time == datetime(2025, 10, 11, 22, 14, 15, tzinfo=UTC)
    assert alert.host == Endpoint(hostname="mymachine")
    assert alert.product == "su"
    assert alert.title == "su: 'su root' failed for lonvick on /dev/pts/8"
    assert alert.severity is Severity.CRITICAL
    assert alert.extra["syslog"]["protocol"] == "rfc3164"
    assert alert.extra["syslog"]["facility_name"] == "auth"


def test_rfc3164_example_2_no_tag(parser: SyslogParser) -> None:
    alert = parse(parser, "<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!")
    assert alert.time == datetime(2025, 2, 5, 17, 32, 18, tzinfo=UTC)
    assert alert.host == Endpoint(ip="10.0.0.99")
    assert alert.title == "Use the BFG!"
    assert alert.product is None
    assert alert.severity is Severity.LOW


def test_rfc3164_example_3_zone_and_year_after_the_time(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        "<165>Aug 24 05:34:00 CST 1987 mymachine myproc[10]: %% It's time to make the do-nuts.  "
        "%%  Ingredients: Mix=OK, Jelly=OK # Devices: Mixer=OK, Jelly_Injector=OK, Frier=OK # "
        "Transport: Conveyer1=OK, Conveyer2=OK # %%",
    )
    assert alert.time == datetime(1987, 8, 24, 11, 34, tzinfo=UTC)  # CST is UTC-6
    assert alert.host == Endpoint(hostname="mymachine")
    assert alert.product == "myproc"
    assert alert.extra["syslog"]["procid"] == "10"
    assert alert.description is not None
    assert alert.description.startswith("%% It's time")


def test_rfc3164_example_4_without_a_valid_timestamp_is_all_content() -> None:
    line = (
        "<0>1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org 10.1.2.3 sched[0]: "
        "That's All Folks!"
    )
    with pytest.raises(ParseError, match="no time") as caught:
        SyslogParser({}).parse(line)
    assert caught.value.field == "timestamp"
    alert = parse(SyslogParser({"missing_time": "receipt"}, clock=ManualClock(RECEIPT)), line)
    assert alert.description == line[3:]
    assert alert.host is None
    assert alert.severity is Severity.FATAL  # emergency
    relayed = parse(
        SyslogParser({}, clock=ManualClock(RECEIPT)),
        "<0>Oct 22 10:52:12 scapegoat 1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org "
        "10.1.2.3 sched[0]: That's All Folks!",
    )
    assert relayed.host == Endpoint(hostname="scapegoat")
    assert relayed.description is not None
    assert relayed.description.startswith("1990 Oct 22")


@pytest.mark.parametrize(
    ("receipt", "stamp", "expected"),
    [
        # Dec 31 received on New Year's Day: last year
        (
            datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
            "Dec 31 23:59:00",
            datetime(2025, 12, 31, 23, 59),
        ),
        # a sender a little ahead, across New Year: next year
        (datetime(2025, 12, 31, 23, 0, tzinfo=UTC), "Jan  1 00:10:00", datetime(2026, 1, 1, 0, 10)),
        # months ahead cannot be: last year
        (datetime(2026, 3, 1, tzinfo=UTC), "Nov 20 08:00:00", datetime(2025, 11, 20, 8, 0)),
        (datetime(2026, 3, 1, tzinfo=UTC), "Feb 28 08:00:00", datetime(2026, 2, 28, 8, 0)),
        # Feb 29 outside a leap year: the latest leap year
        (datetime(2026, 3, 1, tzinfo=UTC), "Feb 29 08:00:00", datetime(2024, 2, 29, 8, 0)),
    ],
)
def test_year_inference_relative_to_receipt(
    receipt: datetime, stamp: str, expected: datetime
) -> None:
    alert = parse(SyslogParser({}, clock=ManualClock(receipt)), f"<13>{stamp} host app: hi")
    assert alert.time == expected.replace(tzinfo=UTC)


def test_rfc3164_variants(parser: SyslogParser) -> None:
    no_pri = parse(parser, "Oct 11 22:14:15 mymachine sshd[4242]: Accepted publickey for root")
    assert no_pri.severity is Severity.UNKNOWN
    assert "facility" not in no_pri.extra["syslog"]
    assert no_pri.extra["syslog"]["procid"] == "4242"
    iso = parse(parser, "<13>2019-01-18T11:07:53.520+01:00 myhost app: hi")
    assert iso.time == datetime(2019, 1, 18, 10, 7, 53, 520000, tzinfo=UTC)
    assert iso.host == Endpoint(hostname="myhost")
    no_host = parse(parser, "<13>Oct 11 22:14:15 su: 'su root' failed")
    assert no_host.host is None
    assert no_host.product == "su"
    utc = parse(parser, "<13>Jan 23 12:10:16 UTC egs-001 app: hi")
    assert utc.host == Endpoint(hostname="egs-001")
    fraction = parse(parser, "<13>Oct 11 22:14:15.250 h app: hi")
    assert fraction.time.microsecond == 250000


def test_cisco_times_that_end_with_a_colon(parser: SyslogParser) -> None:
    """Cisco ASA (without a device id) and IOS end the timestamp with a colon; the message is
    dated by it, not dead-lettered as having no time."""
    asa = parse(
        parser,
        "<166>Mar 05 2025 22:21:02: %ASA-6-302013: Built inbound TCP connection 401 for "
        "outside:203.0.113.9/4413 (203.0.113.9/4413) to dmz:10.0.0.25/25 (10.0.0.25/25)",
    )
    assert asa.time == datetime(2025, 3, 5, 22, 21, 2, tzinfo=UTC)
    assert asa.extra["time_source"] == "syslog"
    assert asa.product == "%ASA-6-302013"
    assert asa.title.startswith("%ASA-6-302013: Built inbound TCP connection 401")
    ios = parse(parser, "<189>Dec 30 23:59:58.123: %SYS-5-CONFIG_I: Configured from console")
    assert ios.time == datetime(2025, 12, 30, 23, 59, 58, 123000, tzinfo=UTC)
    assert ios.product == "%SYS-5-CONFIG_I"


def test_the_timezone_option_places_rfc3164_times() -> None:
    parser = SyslogParser({"timezone": "Europe/Berlin"}, clock=ManualClock(RECEIPT))
    alert = parse(parser, "<13>Jul  1 12:00:00 h app: hi")
    assert alert.time == datetime(2025, 7, 1, 10, 0, tzinfo=UTC)  # CEST
    fixed = SyslogParser({"timezone": "-05:00"}, clock=ManualClock(RECEIPT))
    assert fixed.policy.timezone == timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (0, Severity.FATAL),
        (1, Severity.CRITICAL),
        (2, Severity.CRITICAL),
        (3, Severity.HIGH),
        (4, Severity.MEDIUM),
        (5, Severity.LOW),
        (6, Severity.INFORMATIONAL),
        (7, Severity.INFORMATIONAL),
    ],
)
def test_every_syslog_severity(parser: SyslogParser, severity: int, expected: Severity) -> None:
    pri = 8 * 4 + severity  # facility auth
    assert parse(parser, f"<{pri}>Oct 11 22:14:15 h app: x").severity is expected
    assert parse(parser, f"<{pri}>1 2003-10-11T22:14:15Z h app - - - x").severity is expected


def test_min_severity_turns_quieter_messages_into_not_alerts() -> None:
    parser = SyslogParser({"min_severity": "warning"}, clock=ManualClock(RECEIPT))
    quiet = parser.parse("<14>Oct 11 22:14:15 h app: just info")
    assert isinstance(quiet, NotAnAlert)
    assert "informational" in quiet.reason
    assert isinstance(parser.parse("<12>Oct 11 22:14:15 h app: a warning"), Alert)
    error = SyslogParser({"min_severity": 3, "missing_time": "receipt"})
    assert isinstance(error.parse("<11>1 - h a - - - x"), Alert)
    cef = parser.parse("<14>Oct 11 22:14:15 h CEF:0|v|p|1|s|n|9|rt=1")
    assert isinstance(cef, Alert)  # CEF has its own severity: not filtered on the PRI
    with pytest.raises(InvalidInput):
        build_parser("syslog", {"min_severity": "loud"})


def test_titles_are_one_bounded_line(parser: SyslogParser) -> None:
    alert = parse(parser, "<13>Oct 11 22:14:15 h app: first line\nsecond line")
    assert alert.title == "app: first line"
    assert alert.description == "first line\nsecond line"
    long = parse(parser, "<13>Oct 11 22:14:15 h app: " + "word " * 200)
    assert len(long.title) <= 256
    assert long.title.endswith("…")


# -- CEF and LEEF inside syslog -----------------------------------------------------------------


def test_cef_in_rfc3164_takes_host_and_time_from_the_header(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        "<134>Sep 19 08:26:10 host CEF:0|Security|threatmanager|1.0|100|worm successfully "
        "stopped|10|src=10.0.0.1 dst=2.1.2.2 spt=1232",
    )
    assert alert.title == "worm successfully stopped"
    assert alert.severity is Severity.CRITICAL  # the CEF severity, not the syslog one
    assert alert.host == Endpoint(hostname="host")
    assert alert.time == datetime(2025, 9, 19, 8, 26, 10, tzinfo=UTC)
    assert alert.extra["time_source"] == "syslog"
    assert alert.extra["syslog"]["facility_name"] == "local0"


def test_cef_after_a_tag_and_in_rfc5424(parser: SyslogParser) -> None:
    tagged = parse(
        parser, "<134>Sep 19 08:26:10 fw1 ngfw[77]: CEF:0|V|P|1|9|blocked|7|rt=1700000000000"
    )
    assert tagged.time == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert tagged.extra["time_source"] == "event"
    assert tagged.extra["syslog"]["app_name"] == "ngfw"
    structured = parse(
        parser,
        '<134>1 2024-01-18T11:07:53Z fw1 ngfw 77 - [meta@1 zone="dmz"] '
        "CEF:0|V|P|1|9|blocked|7|dvchost=sensor-2",
    )
    assert structured.host == Endpoint(hostname="sensor-2")
    assert structured.extra["syslog"]["structured_data"] == {"meta@1": {"zone": "dmz"}}


def test_leef_in_syslog(parser: SyslogParser) -> None:
    alert = parse(
        parser,
        "<13>1 2019-01-18T11:07:53.520Z 192.168.1.1 LEEF:2.0|Lancope|StealthWatch|1.0|41|^|"
        "src=10.0.1.8^dst=10.0.0.5^sev=5^srcPort=81^dstPort=21",
    )
    assert alert.vendor == "Lancope"
    assert alert.host == Endpoint(ip="192.168.1.1")
    assert alert.time == datetime(2019, 1, 18, 11, 7, 53, 520000, tzinfo=UTC)
    assert alert.src == Endpoint(ip="10.0.1.8", port=81)


def test_a_broken_cef_payload_is_refused_not_read_as_text(parser: SyslogParser) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse("<134>Sep 19 08:26:10 host CEF:0|Security|threatmanager|1.0")
    assert caught.value.field == "header"


def test_parse_syslog_reads_headers_on_its_own() -> None:
    header = parse_syslog("<13>Oct 11 22:14:15 h app[1]: hi", clock=ManualClock(RECEIPT))
    assert (header.hostname, header.app_name, header.procid, header.message) == (
        "h",
        "app",
        "1",
        "hi",
    )


def test_bad_records_and_options(parser: SyslogParser) -> None:
    with pytest.raises(ParseError, match="must be text"):
        parser.parse(b"<13>Oct 11 22:14:15 h app: hi")
    with pytest.raises(ParseError, match="longer than"):
        parser.parse("x" * (1 << 21))
    with pytest.raises(InvalidInput):
        build_parser("syslog", {"timezone": 5})
    with pytest.raises(InvalidInput):
        build_parser("syslog", {"colour": "blue"})


# -- arbitrary input --------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "<13>", "<0>", "<191>", "<192>", "<", ">", "1 ", "2 ", "-", " ", "  ", "[", "]", '"', "\\",
        "=", "a@1", 'x="y"', "2003-10-11T22:14:15.003Z", "2003-10-11T22:14:15.000000003-07:00",
        "1990-12-31T23:59:60Z", "Oct 11 22:14:15", "Feb 29 01:02:03", "Feb 30 01:02:03", "CST",
        "1987", "host", "su:", "app[1]:", "[", "CEF:0|", "LEEF:2.0|", "|", "^", "\ufeff", "\n",
        "\x00", "é", "GMT+99", "UTC",
    ]
)  # fmt: skip
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_parse_errors(parser: SyslogParser, text: str) -> None:
    with contextlib.suppress(ParseError):
        result = parser.parse(text)
        assert isinstance(result, Alert | NotAnAlert)


@_SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text_raises_nothing_but_parse_error(text: str) -> None:
    _only_parse_errors(SyslogParser({"missing_time": "receipt"}), text)
    _only_parse_errors(SyslogParser(), "<13>1 2003-10-11T22:14:15Z h a - - " + text)


@_SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_nothing_but_parse_error(data: bytes) -> None:
    _only_parse_errors(SyslogParser({"min_severity": "error"}), data.decode("utf-8", "replace"))


@_SETTINGS
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_syslog_shaped_noise_raises_nothing_but_parse_error(text: str) -> None:
    _only_parse_errors(SyslogParser({"missing_time": "receipt"}), text)
    _only_parse_errors(SyslogParser(), text)
