"""The CEF parser: the ArcSight examples, escaping, severities, times, and arbitrary input.

Examples marked "spec" are the ones in ArcSight's "Implementing ArcSight Common Event Format"
(the header/extension escaping examples and the syslog-prefixed worm example); "Trend Micro",
"Kaspersky" and "OPSWAT" lines follow those vendors' published CEF samples.
"""

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
from quell.ingest.parsers.base import ParseError, RecordKind
from quell.ingest.parsers.cef import CefParser, cef_severity, split_extension

RECEIPT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def parser() -> CefParser:
    return CefParser({}, clock=ManualClock(RECEIPT))


def parse(parser: CefParser, line: str) -> Alert:
    result = parser.parse(line)
    assert isinstance(result, Alert)
    return result


def test_the_registry_names_this_parser() -> None:
    assert parser_class("cef") is CefParser
    assert CefParser.record_kind is RecordKind.TEXT


def test_spec_worm_example_behind_a_syslog_header(parser: CefParser) -> None:
    alert = parse(
        parser,
        "Sep 19 08:26:10 host CEF:0|Security|threatmanager|1.0|100|worm successfully stopped|10|"
        "src=10.0.0.1 dst=2.1.2.2 spt=1232",
    )
    assert alert.title == "worm successfully stopped"
    assert alert.rule_name == "worm successfully stopped"
    assert alert.rule_uid == "100"
    assert alert.vendor == "Security"
    assert alert.product == "threatmanager"
    assert alert.severity is Severity.CRITICAL
    assert alert.src == Endpoint(ip="10.0.0.1", port=1232)
    assert alert.dst == Endpoint(ip="2.1.2.2")
    # No rt: the syslog header dates it, in the latest year not after receipt.
    assert alert.time == datetime(2025, 9, 19, 8, 26, 10, tzinfo=UTC)
    assert alert.host == Endpoint(hostname="host")
    assert alert.extra["time_source"] == "syslog"
    assert alert.extra["cef_version"] == "0"
    assert alert.extra["device_version"] == "1.0"
    assert alert.extra["syslog"]["hostname"] == "host"


@pytest.mark.parametrize(
    ("line", "name", "act"),
    [
        # spec: a pipe in the header is escaped, in the extension it is not
        (
            r"CEF:0|security|threatmanager|1.0|100|detected a \| in message|10|"
            r"src=10.0.0.1 act=blocked a | dst=1.1.1.1",
            "detected a | in message",
            "blocked a |",
        ),
        # spec: a backslash is escaped in both
        (
            r"CEF:0|security|threatmanager|1.0|100|detected a \\ in packet|10|"
            r"src=10.0.0.1 act=blocked a \\ dst=1.1.1.1",
            "detected a \\ in packet",
            "blocked a \\",
        ),
        # spec: an equal sign is escaped in the extension only
        (
            r"CEF:0|security|threatmanager|1.0|100|detected a = in message|10|"
            r"src=10.0.0.1 act=blocked a \= dst=1.1.1.1",
            "detected a = in message",
            "blocked a =",
        ),
    ],
)
def test_spec_escaping_examples(parser: CefParser, line: str, name: str, act: str) -> None:
    alert = parse(parser, line + " rt=1700000000000")
    assert alert.title == name
    assert alert.extra["extension"]["act"] == act
    assert alert.src == Endpoint(ip="10.0.0.1")
    assert alert.dst == Endpoint(ip="1.1.1.1")


def test_spec_multi_line_message(parser: CefParser) -> None:
    alert = parse(
        parser,
        r"CEF:0|security|threatmanager|1.0|100|Detected a threat. No action needed.|10|"
        r"src=10.0.0.1 msg=Detected a threat.\n No action needed. rt=1700000000000",
    )
    assert alert.description == "Detected a threat.\n No action needed."


def test_escapes_in_header_and_extension(parser: CefParser) -> None:
    alert = parse(
        parser,
        r"CEF:0|security\\compliance|threat\|->manager|1.0|100|message contains escapes|10|"
        r"spt=1232 msg=Newlines in messages\nare allowed.\r\nAnd so are carriage feeds"
        r"\\newlines\\\=. rt=1700000000000",
    )
    assert alert.vendor == "security\\compliance"
    assert alert.product == "threat|->manager"
    assert alert.description == (
        "Newlines in messages\nare allowed.\r\nAnd so are carriage feeds\\newlines\\=."
    )


def test_unknown_backslash_sequences_are_kept(parser: CefParser) -> None:
    alert = parse(parser, r"CEF:0|v|p|1|1|n|1|filePath=C:\Windows\temp\x.exe rt=1700000000000")
    assert alert.file is not None
    # \W, \t and \x are no CEF escapes: kept as written (a sloppy producer's Windows path)
    assert alert.file.path == r"C:\Windows\temp\x.exe"


def test_an_equals_sign_in_the_header_needs_no_escape(parser: CefParser) -> None:
    alert = parse(parser, "CEF:26|security|threat=manager|1.0|100|stopped|10|src=10.0.0.19 rt=1")
    assert alert.product == "threat=manager"


def test_values_may_contain_spaces_and_stop_at_the_next_key(parser: CefParser) -> None:
    alert = parse(
        parser,
        "CEF:0|security|threatmanager|1.0|100|padded|10|rt=1 spt=1232 "
        "msg=Trailing space in non-final extensions is  preserved    src=10.0.0.192 \r\n",
    )
    assert alert.description == "Trailing space in non-final extensions is  preserved"
    assert alert.src == Endpoint(ip="10.0.0.192", port=1232)


def test_leading_whitespace_empty_values_and_header_only(parser: CefParser) -> None:
    alert = parse(
        parser, "CEF:0|security|threatmanager|1.0|100|t|10| src=10.0.0.192 dst= spt=1232 rt=1"
    )
    assert alert.src == Endpoint(ip="10.0.0.192", port=1232)
    assert alert.dst is None
    assert "extension" not in alert.extra  # an empty value is an absent one
    bare = CefParser({"missing_time": "receipt"}, clock=ManualClock(RECEIPT))
    header_only = parse(
        bare, "CEF:26|security|threatmanager|1.0|100|trojan successfully stopped|10|"
    )
    assert header_only.title == "trojan successfully stopped"
    assert "extension" not in header_only.extra


def test_an_unescaped_equals_sign_in_a_value_is_read_leniently(parser: CefParser) -> None:
    alert = parse(
        parser,
        "CEF:0|FooBar|Web Gateway|1.2.3.45.67|200|Success|2|rt=Sep 07 2018 14:50:39 "
        "cat=Access Log dst=1.1.1.1 dhost=foo.example.com suser=redacted src=2.2.2.2 "
        "requestMethod=POST request='https://foo.example.com/bar/bingo/1' "
        "requestClientApplication='Foo-Bar/2018.1.7; =Email:user@example.com; Guid:test=' "
        "cs1= cs1Label=Foo Bar",
    )
    assert alert.time == datetime(2018, 9, 7, 14, 50, 39, tzinfo=UTC)
    assert alert.category == "Access Log"
    assert alert.dst == Endpoint(ip="1.1.1.1", hostname="foo.example.com")
    assert alert.user == "redacted"
    assert alert.url == "'https://foo.example.com/bar/bingo/1'"
    extension = alert.extra["extension"]
    assert extension["requestMethod"] == "POST"
    # "=Email" is no key (a key needs a name): the value keeps it
    assert extension["requestClientApplication"] == (
        "'Foo-Bar/2018.1.7; =Email:user@example.com; Guid:test='"
    )
    assert alert.extra["custom"] == {"Foo Bar": ""}


def test_a_tab_is_not_a_separator(parser: CefParser) -> None:
    alert = parse(
        parser, "CEF:0|s|t|1.0|100|tabs|10|rt=1 spt=1232 msg=Tab is not a separator\tsrc=127.0.0.1"
    )
    assert alert.description == "Tab is not a separator\tsrc=127.0.0.1"
    assert alert.src == Endpoint(port=1232)


@pytest.mark.parametrize(
    "line",
    [
        "CEF:0|SentinelOne|Mgmt|activityID=1111111111111111111 activityType=3505 siteId=None",
        "CEF:0|a=\\\\ b|",
        "CEF:0|\\|a=|b=",
        "CEF:0|\\||a=b",
        "CEF:0|a=|b\\\\ c=d",
        "CEF:|v|p|1|2|n|3|",
        "just some text",
        "",
    ],
)
def test_truncated_or_foreign_records_are_refused(parser: CefParser, line: str) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse(line)
    assert caught.value.field == "header"


def test_a_record_that_is_not_text_is_refused(parser: CefParser) -> None:
    with pytest.raises(ParseError, match="must be text"):
        parser.parse({"CEF": 0})


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        *[(str(n), Severity.LOW) for n in range(4)],
        *[(str(n), Severity.MEDIUM) for n in range(4, 7)],
        ("7", Severity.HIGH),
        ("8", Severity.HIGH),
        ("9", Severity.CRITICAL),
        ("10", Severity.CRITICAL),
        ("Low", Severity.LOW),
        ("Medium", Severity.MEDIUM),
        ("High", Severity.HIGH),
        ("Very-High", Severity.CRITICAL),
        ("very high", Severity.CRITICAL),
        ("Unknown", Severity.UNKNOWN),
        ("11", Severity.UNKNOWN),
        ("-1", Severity.UNKNOWN),
        ("urgent", Severity.UNKNOWN),
        ("", Severity.UNKNOWN),
    ],
)
def test_every_severity_form(parser: CefParser, written: str, expected: Severity) -> None:
    assert cef_severity(written) is expected
    alert = parse(parser, f"CEF:0|v|p|1|sig|name|{written}|rt=1700000000000")
    assert alert.severity is expected
    assert alert.extra["cef_severity"] == written


def test_kaspersky_word_severity_and_syslog_prefix(parser: CefParser) -> None:
    # Kaspersky Web Traffic Security's documented line; its prefix is no syslog header.
    alert = parse(
        parser,
        "Oct 30, 2021 10:34:23 host.domain.com CEF:0|AO Kaspersky Lab|Kaspersky Web Traffic "
        "Security|6.1.0.1234|LMS_EV_SETTINGS_CHANGED|task settings changed|Low|"
        "rt=1635590063000",
    )
    assert alert.severity is Severity.LOW
    assert alert.extra["prefix"] == "Oct 30, 2021 10:34:23 host.domain.com"
    assert alert.host is None


def test_opswat_prefix_with_a_zone_after_the_time(parser: CefParser) -> None:
    alert = parse(
        parser,
        "Jan 23 12:10:16 UTC egs-001 CEF:0|OPSWAT|MDEMAIL|5.7.4|email.workflow|Sending email|2|"
        'OMSemailId=681464 OMSuri=smtp://192.168.0.17:25 OMSrecipients=QList("a@example.com")',
    )
    # 23 January is weeks after receipt (1 January 2026): last year's
    assert alert.time == datetime(2025, 1, 23, 12, 10, 16, tzinfo=UTC)
    assert alert.host == Endpoint(hostname="egs-001")
    assert alert.extra["extension"]["OMSuri"] == "smtp://192.168.0.17:25"


def test_trend_micro_sample_maps_devices_files_and_custom_fields(parser: CefParser) -> None:
    alert = parse(
        parser,
        "CEF:0|Trend Micro|Apex Central|2019|PML:Action result|virusa|3|"
        "rt=Feb 14 2017 11:14:08 GMT+00:00 dvchost=Sample_OSCE cn1Label=Probable Threat Type "
        "cn1=35143 cs2Label=Security Threat cs2=Troj.Win32.TRX.XXPE002FF017 shost=10.0.0.1 "
        "suser=TREND\\User filePath=D:\\\\ fname=ALCORMP.EXE duser=user1 act=21 "
        "fileHash=3395856CE81F2B7382DEE72602F798B642F14140 dst=10.0.35.49 "
        "deviceExternalId=6B593E17AFB7-40FBBB28-A4CE-0462-A536 externalId=1648",
    )
    assert alert.time == datetime(2017, 2, 14, 11, 14, 8, tzinfo=UTC)
    assert alert.severity is Severity.LOW
    assert alert.host == Endpoint(hostname="Sample_OSCE")
    assert alert.src == Endpoint(hostname="10.0.0.1")
    assert alert.dst == Endpoint(ip="10.0.35.49")
    assert alert.user == "TREND\\User"
    assert alert.uid == "1648"
    assert alert.file is not None
    assert alert.file.name == "ALCORMP.EXE"
    assert alert.file.path == "D:\\"
    assert alert.file.sha1 == "3395856ce81f2b7382dee72602f798b642f14140"
    assert alert.extra["custom"] == {
        "Probable Threat Type": "35143",
        "Security Threat": "Troj.Win32.TRX.XXPE002FF017",
    }
    assert alert.extra["extension"] == {
        "duser": "user1",
        "act": "21",
        "deviceExternalId": "6B593E17AFB7-40FBBB28-A4CE-0462-A536",
    }


def test_full_key_names_read_as_short_ones(parser: CefParser) -> None:
    alert = parse(
        parser,
        "CEF:0|v|p|1|sig|name|5|sourceAddress=10.1.1.1 sourcePort=4444 destinationAddress=::1 "
        "destinationPort=443 deviceReceiptTime=1700000000000 requestUrl=http://x.test/a "
        "deviceCustomString1=yes deviceCustomString1Label=Blocked fileSize=1024 "
        "fileHash=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )
    assert alert.src == Endpoint(ip="10.1.1.1", port=4444)
    assert alert.dst == Endpoint(ip="::1", port=443)
    assert alert.url == "http://x.test/a"
    assert alert.extra["custom"] == {"Blocked": "yes"}
    assert alert.file is not None
    assert alert.file.size == 1024
    assert alert.file.sha256 is not None
    assert alert.time == datetime.fromtimestamp(1_700_000_000, UTC)


def test_values_that_do_not_fit_their_field_stay_in_the_extension(parser: CefParser) -> None:
    alert = parse(
        parser, "CEF:0|v|p|1|sig|name|5|spt=http src=not-an-ip shost=h1 fileHash=xyz rt=1"
    )
    assert alert.src == Endpoint(hostname="h1")
    assert alert.extra["extension"] == {"spt": "http", "src": "not-an-ip", "fileHash": "xyz"}


def test_the_first_user_is_the_source_user_else_the_destination_user(parser: CefParser) -> None:
    assert parse(parser, "CEF:0|v|p|1|s|n|5|duser=bob rt=1").user == "bob"
    assert parse(parser, "CEF:0|v|p|1|s|n|5|suser=alice duser=bob rt=1").user == "alice"


@pytest.mark.parametrize(
    ("rt", "expected"),
    [
        ("1700000000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),  # epoch ms
        ("1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),  # epoch s
        ("Nov 14 2023 22:13:20", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("Nov 14 2023 22:13:20.250", datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)),
        ("Nov 14 2023 23:13:20 CET", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("Nov 14 2023 23:13:20.5 GMT+01:00", datetime(2023, 11, 14, 22, 13, 20, 500000, UTC)),
        ("Nov 14 2023 17:13:20 America/New_York", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("Dec 30 10:00:00", datetime(2025, 12, 30, 10, 0, tzinfo=UTC)),  # no year
        ("Dec 30 10:00:00.125 UTC", datetime(2025, 12, 30, 10, 0, 0, 125000, tzinfo=UTC)),
        ("Jan  1 10:00:00 EST", datetime(2026, 1, 1, 15, 0, tzinfo=UTC)),
        ("2023-11-14T22:13:20Z", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T23:13:20+01:00", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ],
)
def test_every_time_form(parser: CefParser, rt: str, expected: datetime) -> None:
    alert = parse(parser, f"CEF:0|v|p|1|s|n|5|src=10.0.0.1 rt={rt} dst=10.0.0.2")
    assert alert.time == expected
    assert alert.time.tzinfo is UTC
    assert alert.extra["time_source"] == "event"
    assert alert.dst == Endpoint(ip="10.0.0.2")


def test_dtz_and_the_timezone_option_place_zoneless_times() -> None:
    clock = ManualClock(RECEIPT)
    line = "CEF:0|v|p|1|s|n|5|rt=Nov 14 2023 23:13:20"
    assert parse(CefParser({}, clock=clock), line).time.hour == 23
    berlin = CefParser({"timezone": "Europe/Berlin"}, clock=clock)
    assert parse(berlin, line).time == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    with_dtz = parse(berlin, line + " dtz=America/Los_Angeles")
    assert with_dtz.time == datetime(2023, 11, 15, 7, 13, 20, tzinfo=UTC)
    assert with_dtz.extra["extension"]["dtz"] == "America/Los_Angeles"


def test_start_then_end_date_the_alert_when_rt_is_missing(parser: CefParser) -> None:
    alert = parse(parser, "CEF:0|v|p|1|s|n|5|end=1700000001000 start=1700000000000")
    assert alert.time == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert alert.extra["extension"] == {"end": "1700000001000"}


@pytest.mark.parametrize(
    ("extension", "field"),
    [
        ("rt=yesterday", "rt"),
        ("rt=Feb 30 2023 10:00:00", "rt"),
        ("rt=Nov 14 2023 23:13:20 Mars/Olympus", "rt"),
        ("start=99999999999999999", "start"),
        ("rt=1 dtz=Nowhere/City", "dtz"),
    ],
)
def test_a_bad_time_is_refused_naming_its_key(
    parser: CefParser, extension: str, field: str
) -> None:
    with pytest.raises(ParseError) as caught:
        parser.parse(f"CEF:0|v|p|1|s|n|5|{extension}")
    assert caught.value.field == field


def test_a_record_without_time_is_refused_unless_receipt_time_is_allowed() -> None:
    line = "CEF:0|v|p|1|s|n|5|src=10.0.0.1"
    clock = ManualClock(RECEIPT)
    with pytest.raises(ParseError, match="no time") as caught:
        CefParser({}, clock=clock).parse(line)
    assert caught.value.field == "rt"
    alert = parse(CefParser({"missing_time": "receipt"}, clock=clock), line)
    assert alert.time == RECEIPT
    assert alert.extra["time_source"] == "receipt"


def test_a_device_in_the_record_wins_over_the_syslog_host(parser: CefParser) -> None:
    alert = parse(
        parser,
        "<134>1 2024-01-18T11:07:53.520Z relay app - - - CEF:0|v|p|1|s|n|5|dvc=192.0.2.7 "
        "dvchost=fw1",
    )
    assert alert.host == Endpoint(ip="192.0.2.7", hostname="fw1")
    assert alert.time == datetime(2024, 1, 18, 11, 7, 53, 520000, tzinfo=UTC)
    assert alert.extra["syslog"]["app_name"] == "app"


def test_titles_are_one_bounded_line(parser: CefParser) -> None:
    alert = parse(parser, "CEF:0|v|p|1|sig|" + "long name " * 100 + "|5|rt=1")
    assert len(alert.title) <= 256
    assert alert.title.endswith("…")
    assert parse(parser, "CEF:0|v|p|1|sig||5|rt=1").title == "sig"
    assert parse(parser, "CEF:0|v|p|1|||5|rt=1").title == "v p event"


def test_split_extension_returns_text_before_the_first_key() -> None:
    assert split_extension("garbage here a=1 b=two words") == (
        {"a": "1", "b": "two words"},
        "garbage here",
    )
    assert split_extension("no pairs at all") == ({}, "no pairs at all")
    assert split_extension("") == ({}, "")


def test_more_extension_fields_than_the_bound_are_refused(parser: CefParser) -> None:
    line = "CEF:0|v|p|1|s|n|5|rt=1 " + " ".join(f"k{n}=v" for n in range(1100))
    with pytest.raises(ParseError, match="more than 1024"):
        parser.parse(line)


def test_options_are_checked_when_the_parser_is_built() -> None:
    with pytest.raises(ParseError) as caught:
        CefParser({"timezone": "Mars/Olympus"})
    assert caught.value.field == "timezone"
    with pytest.raises(ParseError):
        CefParser({"missing_time": "now"})
    with pytest.raises(InvalidInput) as unknown:
        build_parser("cef", {"time_zone": "UTC"})
    assert unknown.value.details["field"] == "options.time_zone"
    fixed = CefParser({"timezone": "+02:00"}, clock=ManualClock(RECEIPT))
    assert parse(fixed, "CEF:0|v|p|1|s|n|5|rt=Nov 14 2023 23:13:20").time.hour == 21
    assert fixed.policy.timezone == timezone(timedelta(hours=2))


# -- arbitrary input --------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "CEF:0|", "CEF:1|", "|", "\\", "\\|", "\\\\", "\\=", "=", " ", "  ", "\t", "\n", "\r",
        "src=", "spt=", "rt=", "dtz=", "start=", "fileHash=", "fsize=", "cs1=", "cs1Label=",
        "sourceAddress=", "10.0.0.1", "::1", "99999999999999999999", "1700000000000",
        "Sep 19 08:26:10", "Feb 29 2023 10:00:00", "Nov 14 2023 23:13:20 GMT+99:99", "Low",
        "Very-High", "<13>", "<999>", "1 ", "2003-10-11T22:14:15.003Z", "-", "[a b=\"c\"]", "é",
        "\x00", "\ufeff", "x", "65536",
    ]
)  # fmt: skip

_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_parse_errors(parser: CefParser, text: str) -> None:
    with contextlib.suppress(ParseError):
        parser.parse(text)


@_SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text_raises_nothing_but_parse_error(text: str) -> None:
    _only_parse_errors(CefParser({"missing_time": "receipt"}), text)
    _only_parse_errors(CefParser(), "CEF:0|" + text)


@_SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_nothing_but_parse_error(data: bytes) -> None:
    _only_parse_errors(CefParser(), data.decode("utf-8", errors="replace"))


@_SETTINGS
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_cef_shaped_noise_raises_nothing_but_parse_error(text: str) -> None:
    _only_parse_errors(CefParser({"missing_time": "receipt"}), text)
    _only_parse_errors(CefParser(), "CEF:0|v|p|1|s|n|5|" + text)
