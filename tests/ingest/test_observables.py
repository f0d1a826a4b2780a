"""Observable extraction: refang/defang, IP classification, free text and whole alerts."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quell.ingest.model import (
    Alert,
    EmailInfo,
    Endpoint,
    FileInfo,
    Observable,
    ObservableType,
)
from quell.ingest.observables import (
    MAX_OBSERVABLES,
    MAX_TEXT_CHARS,
    classify_ip,
    defang,
    extract_text,
    observables_of,
    refang,
)

T = ObservableType
ROOT = Path(__file__).resolve().parents[2]

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def pairs(observables: list[Observable]) -> set[tuple[str, str]]:
    """``{(type, value)}``: what was found, regardless of role and order."""
    return {(o.type.value, o.value) for o in observables}


def values(text: str, type_: ObservableType) -> list[str]:
    """The values of one type that ``extract_text`` finds in ``text``."""
    return [o.value for o in extract_text(text) if o.type is type_]


def by_key(observables: list[Observable]) -> dict[tuple[str, str], Observable]:
    return {(o.type.value, o.value): o for o in observables}


def make_alert(**fields: Any) -> Alert:
    fields.setdefault("title", "")
    return Alert(time=datetime(2024, 1, 15, 3, 12, 44, tzinfo=UTC), **fields)


# -- refang / defang ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("defanged", "plain"),
    [
        ("hxxp://evil[.]com/a", "http://evil.com/a"),
        ("hxxps[:]//evil[.]example[.]com/login", "https://evil.example.com/login"),
        ("hxxps[://]evil.example/x", "https://evil.example/x"),
        ("hXXps://evil(.)example", "hTTps://evil.example"),
        ("HXXP://EVIL{.}COM", "HTTP://EVIL.COM"),
        ("fxp://files[.]example[.]org/a.bin", "ftp://files.example.org/a.bin"),
        ("evil[dot]com evil(DOT)com evil{Dot}com", "evil.com evil.com evil.com"),
        ("alice[@]example[.]com", "alice@example.com"),
        ("alice[at]example(dot)com", "alice@example.com"),
        ("alice(AT)example[.]com", "alice@example.com"),
        ("2001[:]db8[:][:]1", "2001:db8::1"),
        ("evil[ . ]com", "evil.com"),
        ("evil[[.]]com and evil([.])com", "evil.com and evil.com"),
        ("192[.]0[.]2[.]1", "192.0.2.1"),
        ('"example[.]com" etc', '"example.com" etc'),
    ],
)
def test_refang_undoes_common_markers(defanged: str, plain: str) -> None:
    assert refang(defanged) == plain


@pytest.mark.parametrize(
    "text",
    [
        "The quick (brown) fox [jumps] over {the} lazy dog.",
        "Meet me at home; call (at once).",
        "shxxp://not-a-scheme and hxxpfoo without a colon",
        "list[:3] and a ] stray ) bracket (",
        "",
    ],
)
def test_refang_leaves_ordinary_text_alone(text: str) -> None:
    assert refang(text) == text


@pytest.mark.parametrize(
    ("plain", "defanged"),
    [
        ("http://evil.com/a.php", "hxxp://evil[.]com/a[.]php"),
        ("HTTPS://EVIL.COM", "HXXPS://EVIL[.]COM"),
        ("ftp://files.example.org", "fxp://files[.]example[.]org"),
        ("connect to 203.0.113.7 now.", "connect to 203[.]0[.]113[.]7 now."),
        ("mail alice@example.com", "mail alice@example[.]com"),
        ("plain words only", "plain words only"),
    ],
)
def test_defang_makes_indicators_unclickable(plain: str, defanged: str) -> None:
    assert defang(plain) == defanged
    assert refang(defanged) == plain


def test_defanged_text_yields_what_the_plain_text_does() -> None:
    text = "beacon to https://cdn.evil.example/a.js from 198.51.100.23"
    assert pairs(extract_text(defang(text))) == pairs(extract_text(text))


# Fragments that make markers, nested brackets, schemes and near misses likely.
_FANG_PIECES = st.sampled_from(
    [
        *("[", "]", "(", ")", "{", "}", ".", ":", "/", "@", " ", "dot", "DOT", "at", "AT"),
        *("x", "X", "h", "hxxp", "hXXps", "fxp", "http", "s", "a", "1", "é", "\n", "://"),
        *("[.]", "(at)"),
    ]
)
_FANG_TEXT = st.one_of(st.lists(_FANG_PIECES, max_size=40).map("".join), st.text(max_size=200))


@given(_FANG_TEXT)
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_refang_is_idempotent(text: str) -> None:
    once = refang(text)
    assert refang(once) == once


@given(_FANG_TEXT)
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_defang_round_trips_through_refang(text: str) -> None:
    assume(refang(text) == text)
    assert refang(defang(text)) == text


# -- classify_ip -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_", "private"),
    [
        ("10.0.0.1", T.IPV4, True),
        ("192.168.1.1", T.IPV4, True),
        ("172.16.5.4", T.IPV4, True),
        ("100.64.0.1", T.IPV4, True),  # CGNAT
        ("127.0.0.1", T.IPV4, True),
        ("169.254.169.254", T.IPV4, True),  # link-local, the cloud metadata address
        ("192.0.2.10", T.IPV4, True),  # documentation
        ("224.0.0.251", T.IPV4, True),  # multicast (mDNS)
        ("8.8.8.8", T.IPV4, False),
        ("93.184.216.34", T.IPV4, False),
        ("::1", T.IPV6, True),
        ("fe80::1", T.IPV6, True),
        ("fd00::1", T.IPV6, True),  # unique local
        ("2001:db8::1", T.IPV6, True),  # documentation
        ("ff02::1", T.IPV6, True),  # multicast
        ("2606:4700:4700::1111", T.IPV6, False),
    ],
)
def test_classify_ip_marks_non_global_addresses_private(
    value: str, type_: ObservableType, private: bool
) -> None:
    assert classify_ip(value) == Observable(type_, value, None, private)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 8.8.8.8 ", Observable(T.IPV4, "8.8.8.8", "src", False)),
        ("2001:0DB8:0000:0000::0001", Observable(T.IPV6, "2001:db8::1", "src", True)),
        ("[2606:4700:4700::1111]", Observable(T.IPV6, "2606:4700:4700::1111", "src", False)),
        ("fe80::1%eth0", Observable(T.IPV6, "fe80::1", "src", True)),
        ("::ffff:10.0.0.1", Observable(T.IPV4, "10.0.0.1", "src", True)),
        ("::FFFF:8.8.4.4", Observable(T.IPV4, "8.8.4.4", "src", False)),
    ],
)
def test_classify_ip_gives_canonical_text(value: str, expected: Observable) -> None:
    assert classify_ip(value, role="src") == expected


@pytest.mark.parametrize(
    "value",
    ["", "010.0.0.1", "256.1.1.1", "1.2.3", "1.2.3.4:80", "example.com", "::g", "1" * 100],
)
def test_classify_ip_refuses_what_is_not_an_address(value: str) -> None:
    assert classify_ip(value) is None


# -- extract_text: one type at a time ----------------------------------------------------------


def test_extracts_ipv4_with_private_flag() -> None:
    found = by_key(extract_text("from 10.1.2.3:51234 to 93.184.216.34:443 (via 100.64.0.9/10)"))
    assert found[("ipv4", "10.1.2.3")].private is True
    assert found[("ipv4", "93.184.216.34")].private is False
    assert found[("ipv4", "100.64.0.9")].private is True


def test_extracts_ipv6() -> None:
    text = "peer [2001:DB8::1]:443, local fe80::1%eth0, dns 2606:4700:4700::1111, ::ffff:8.8.8.8"
    assert pairs(extract_text(text)) == {
        ("ipv6", "2001:db8::1"),
        ("ipv6", "fe80::1"),
        ("ipv6", "2606:4700:4700::1111"),
        ("ipv4", "8.8.8.8"),
    }


def test_extracts_domains_lowercase_and_refanged() -> None:
    text = "Beacon to Login.Evil-Example.COM. Also evil[.]example[.]net and paypal(dot)com.evil.ru"
    assert values(text, T.DOMAIN) == [
        "login.evil-example.com",
        "evil.example.net",
        "paypal.com.evil.ru",
    ]


def test_extracts_urls_with_domain_and_registered_domain() -> None:
    found = extract_text("Clicked hxxps://a.b.Example.CO.UK/Path?Q=1 today")
    assert pairs(found) == {
        ("url", "https://a.b.example.co.uk/Path?Q=1"),
        ("domain", "a.b.example.co.uk"),
        ("domain", "example.co.uk"),
    }


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("(see https://en.example.org/wiki/A_(b))", "https://en.example.org/wiki/A_(b)"),
        ("<https://example.com/x>,", "https://example.com/x"),
        ('{"u": "https://example.com/q?a=1&b=2"}', "https://example.com/q?a=1&b=2"),
        ("go to https://example.com/path.", "https://example.com/path"),
        ("[link](https://example.com/a)", "https://example.com/a"),
        ("ftp://files.example.org/pub/a.tgz;", "ftp://files.example.org/pub/a.tgz"),
        ("http://user:pw@Example.com:8080/x!", "http://user:pw@example.com:8080/x"),
    ],
)
def test_url_loses_trailing_punctuation(text: str, url: str) -> None:
    assert values(text, T.URL) == [url]


def test_url_with_ip_host_adds_the_ip() -> None:
    found = by_key(extract_text("GET http://203.0.113.5/x and http://[2001:db8::2]:8080/y"))
    assert found[("ipv4", "203.0.113.5")].private is True
    assert ("ipv6", "2001:db8::2") in found
    assert ("url", "http://[2001:db8::2]:8080/y") in found


def test_url_host_under_a_file_extension_tld_is_a_domain() -> None:
    assert pairs(extract_text("http://invoice.zip/")) == {
        ("url", "http://invoice.zip/"),
        ("domain", "invoice.zip"),
    }


def test_idn_url_host_becomes_punycode_domain() -> None:
    found = pairs(extract_text("https://пример.рф/путь"))
    assert ("url", "https://пример.рф/путь") in found
    assert ("domain", "xn--e1afmkfd.xn--p1ai") in found


def test_refuses_urls_without_a_real_host() -> None:
    assert (
        values("http://999.1.1.1/ https:///x sftp://example.com/ xhttp://example.com", T.URL) == []
    )


def test_extracts_emails_lowercase_without_their_domain() -> None:
    found = extract_text("Contact Alice.Smith+soc@Example.ORG or bob[at]corp[.]example[.]com.")
    assert pairs(found) == {
        ("email", "alice.smith+soc@example.org"),
        ("email", "bob@corp.example.com"),
    }


def test_url_userinfo_is_no_email_address() -> None:
    found = pairs(
        extract_text("http://paypal.com@evil.example.net/login http://u:pw@evil.example.net/")
    )
    assert found == {
        ("url", "http://paypal.com@evil.example.net/login"),
        ("url", "http://u:pw@evil.example.net/"),
        ("domain", "evil.example.net"),
        ("domain", "example.net"),
    }
    assert values("mailto:alice@example.com", T.EMAIL) == ["alice@example.com"]


def test_extracts_hashes_by_exact_length_lowercase() -> None:
    text = f"md5={MD5.upper()} sha1:{SHA1} sha256 {SHA256}."
    assert pairs(extract_text(text)) == {("md5", MD5), ("sha1", SHA1), ("sha256", SHA256)}


def test_extracts_cve_ids_upper_case() -> None:
    found = values("Exploits cve-2021-44228 and CVE-2017-0144, not CVE-21-1.", T.CVE)
    assert sorted(found) == ["CVE-2017-0144", "CVE-2021-44228"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Matches T1059.001 behaviour", ["T1059.001"]),
        ("MITRE ATT&CK: T1110, T1078", ["T1110", "T1078"]),
        ("Brute force technique T1110", ["T1110"]),
        ("T1059.001 and T1105 seen", ["T1059.001", "T1105"]),
        ("tags: attack.t1003.001, attack.t1021", ["T1003.001", "T1021"]),
        ("ICS technique T0855", ["T0855"]),
        ("Replace the T1000 printer toner", []),
        ("Ticket T1234 opened by the help desk", []),
        ("at 2024-01-15T1200Z", []),
        ("T1059.0011 and XT1059.001", []),
    ],
)
def test_attack_ids_need_a_plausible_context(text: str, expected: list[str]) -> None:
    assert values(text, T.ATTACK_TECHNIQUE) == expected


def test_role_is_applied_and_values_deduplicated() -> None:
    found = extract_text("8.8.8.8 8.8.8.8 EVIL.example.com evil.example.com", role="body")
    assert found == [
        Observable(T.IPV4, "8.8.8.8", "body", False),
        Observable(T.DOMAIN, "evil.example.com", "body", None),
    ]


# -- extract_text: false positives we decided against ------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "opened invoice.pdf then ran setup.exe and report.docx",
        "payload invoice.zip, clip.mov, setup.py, install.sh, libevil.so, Main.java, notes.one",
        "see README.md and update.cab",
        "field user.name, host.id and event.data; dns.question.name",
        "WScript.Shell and ADODB.Stream via System.Net.WebClient and Microsoft.Windows",
        "version 1.2.3.4, build 10.0.19041.1, fw: 2.0.0.1, v1.2.3",
        "OID 1.3.6.1.4.1.311 and 1.2.3.4.5 and 01.02.03.04",
        "at 12:34:56 MAC 00:1a:2b:3c:4d:5e, std::vector",
        '"serial":"5C:9C:E1:09:78:87:F8:07","fingerprint":"6a:ff:ac:a6:5f:8a:05:e7:a9:8c:76:29"',
        "listening on 0.0.0.0:8080 and [::]:443",
        "bücher.de and straße.com in prose",  # non-ASCII names count in URLs only
        "e.g. i.e. U.S. a.m.",
        "GUID 0x" + MD5 + " token " + MD5 + "g",
        "number " + "1" * 32,
    ],
)
def test_classic_false_positives_yield_nothing(text: str) -> None:
    assert extract_text(text) == []


def test_a_longer_hex_run_holds_no_shorter_hash() -> None:
    assert extract_text("blob " + SHA256 + "abcdef") == []
    assert pairs(extract_text(SHA256)) == {("sha256", SHA256)}


def test_email_domain_is_not_a_domain_but_other_names_are() -> None:
    found = pairs(extract_text("From soc@mail.example.org about mail.example.org"))
    assert found == {("email", "soc@mail.example.org"), ("domain", "mail.example.org")}


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("cdn.evil.zip", "cdn.evil.zip"),  # three labels under a file-extension TLD
        ("kemkes.go.id", "kemkes.go.id"),  # code-like TLD below a two-label public suffix
        ("ASP.NET", "asp.net"),  # all capitals is a name, not a class
        ("\\\\fileserver.corp.example.com\\share", "fileserver.corp.example.com"),
    ],
)
def test_names_that_look_ambiguous_but_are_domains(text: str, domain: str) -> None:
    assert values(text, T.DOMAIN) == [domain]


# -- extract_text: bounds ----------------------------------------------------------------------


def test_extract_text_returns_at_most_the_limit() -> None:
    text = " ".join(f"10.0.{i // 250}.{i % 250}" for i in range(1000))
    assert len(extract_text(text)) == MAX_OBSERVABLES
    assert len(extract_text(text, limit=10)) == 10


def test_text_past_the_scan_bound_is_ignored() -> None:
    filler = "x " * (MAX_TEXT_CHARS // 2)
    assert extract_text(filler + "8.8.8.8") == []
    assert values("8.8.8.8 " + filler, T.IPV4) == ["8.8.8.8"]


def test_scan_bound_cuts_at_whitespace_not_inside_an_indicator() -> None:
    head = "x" * (MAX_TEXT_CHARS - 10) + " "
    assert extract_text(head + "www.evil.example.com") == []


def test_huge_hostile_inputs_finish() -> None:
    hostile = ["a." * 40000, "[" * 70000 + ".", ":" * 70000, "1." * 40000, "http://" * 10000]
    hostile += ["http://a/" + ")" * 70000, "( " * 40000 + "[.]", "a@" * 40000, "f" * 70000]
    for text in hostile:
        extract_text(text)  # bounded work, no exception; the timing is the bench's business


# -- extract_text: properties ------------------------------------------------------------------

_INDICATORS = st.sampled_from(
    [
        *("8.8.8.8", "10.0.0.1", "::1", "fe80::1%eth0", "evil.example.com", "hxxp://a[.]b.com/x"),
        *("a@b.example", MD5, SHA256, "CVE-2021-44228", "T1059.001", "invoice.zip", "[.]", "://"),
    ]
)
_ANY_TEXT = st.one_of(
    st.text(),
    st.text(st.characters(codec=None)),  # every code point, surrogates included
    st.lists(st.one_of(_INDICATORS, st.text(max_size=8)), max_size=30).map(" ".join),
    st.lists(st.one_of(_INDICATORS, st.text(max_size=8)), max_size=30).map("".join),
    st.text(max_size=40).map(lambda s: s * (70000 // (len(s) + 1))),  # past the scan bound
)


def _assert_valid(observable: Observable) -> None:
    assert isinstance(observable.type, ObservableType)
    assert observable.value
    assert observable.value == observable.value.strip()
    if observable.type in (T.IPV4, T.IPV6):
        assert isinstance(observable.private, bool)
        assert str(ipaddress.ip_address(observable.value)) == observable.value
    else:
        assert observable.private is None
    if observable.type in (T.MD5, T.SHA1, T.SHA256):
        int(observable.value, 16)
        assert observable.value == observable.value.lower()


@given(_ANY_TEXT)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_extract_text_never_raises_and_returns_valid_observables(text: str) -> None:
    found = extract_text(text)
    assert len(found) <= MAX_OBSERVABLES
    assert len({(o.type, o.value) for o in found}) == len(found)
    for observable in found:
        _assert_valid(observable)
        assert observable.role == "text"


@given(_ANY_TEXT)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_extraction_finds_the_same_in_refanged_text(text: str) -> None:
    assert pairs(extract_text(refang(text))) == pairs(extract_text(text))


# -- the public-suffix list is bundled ---------------------------------------------------------


def test_extraction_works_with_the_network_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("observable extraction tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert pairs(extract_text("https://x.evil.co.uk/a from 8.8.8.8")) == {
        ("url", "https://x.evil.co.uk/a"),
        ("domain", "x.evil.co.uk"),
        ("domain", "evil.co.uk"),
        ("ipv4", "8.8.8.8"),
    }


def test_list_loads_from_the_package_without_network_or_writes() -> None:
    """In a fresh interpreter, an audit hook sees every socket and file opened by first use."""
    script = textwrap.dedent(
        """
        import json, os, sys

        events = []
        WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def hook(event, args):
            if event.startswith("socket."):
                events.append(event)
            elif event == "open":
                path, mode, flags = args
                writes = any(c in (mode or "") for c in "wax+")
                if writes or (isinstance(flags, int) and flags > 0 and flags & WRITE):
                    events.append(f"write {path}")

        sys.addaudithook(hook)
        from quell.ingest.observables import extract_text, observables_of

        found = extract_text("see https://a.b.example.co.uk/x and c.d.example.com.au")
        print(json.dumps({"events": events, "found": sorted(o.value for o in found)}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-B", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["events"] == []
    assert report["found"] == [
        "a.b.example.co.uk",
        "c.d.example.com.au",
        "example.co.uk",
        "https://a.b.example.co.uk/x",
    ]


# -- observables_of ----------------------------------------------------------------------------


def test_observables_of_a_typical_alert() -> None:
    alert = make_alert(
        title="ET SCAN SSH brute force from 203.0.113.45 against DB-01",
        src=Endpoint(ip="203.0.113.45", port=51234),
        dst=Endpoint(ip="10.20.30.40", port=22, hostname="DB-01.Corp.Example.COM."),
        user=" CORP\\Alice ",
    )
    assert observables_of(alert) == [
        Observable(T.IPV4, "203.0.113.45", "src", True),
        Observable(T.IPV4, "10.20.30.40", "dst", True),
        Observable(T.HOSTNAME, "db-01.corp.example.com", "dst", None),
        Observable(T.USER, "CORP\\Alice", "user", None),
    ]


def test_structured_role_beats_text_whatever_the_order() -> None:
    alert = make_alert(
        title="Beacon to 8.8.8.8 and evil.example.com",
        description="User alice@corp.example clicked https://evil.example.com/x",
        dst=Endpoint(ip="8.8.8.8"),
        url="https://evil.example.com/x",
        user="alice@corp.example",
    )
    found = by_key(observables_of(alert))
    assert found[("ipv4", "8.8.8.8")].role == "dst"
    assert found[("url", "https://evil.example.com/x")].role == "url"
    assert found[("domain", "evil.example.com")].role == "url"
    assert found[("domain", "example.com")].role == "url"
    assert found[("email", "alice@corp.example")].role == "user"
    assert len(found) == len(observables_of(alert))


def test_endpoint_host_names_are_normalized_or_taken_as_ips() -> None:
    alert = make_alert(
        src=Endpoint(ip="0.0.0.0", hostname="192.168.7.7"),  # noqa: S104 - a logged value
        dst=Endpoint(hostname="-"),
        host=Endpoint(ip="fe80::1%en0", hostname="WS-0231"),
    )
    assert observables_of(alert) == [
        Observable(T.IPV4, "192.168.7.7", "src", True),
        Observable(T.IPV6, "fe80::1", "host", True),
        Observable(T.HOSTNAME, "ws-0231", "host", None),
    ]
    device = make_alert(host=Endpoint(hostname="John's MacBook Pro"))
    assert observables_of(device) == [Observable(T.HOSTNAME, "john's macbook pro", "host")]


def test_file_fields() -> None:
    alert = make_alert(
        file=FileInfo(
            path="C:\\Users\\bob\\Downloads\\Invoice.PDF.exe", md5=MD5.upper(), sha256=SHA256
        )
    )
    assert pairs(observables_of(alert)) == {
        ("file_name", "Invoice.PDF.exe"),
        ("md5", MD5),
        ("sha256", SHA256),
    }
    named = make_alert(file=FileInfo(name="a.sh", path="/tmp/x/b.sh", md5=SHA1))
    assert pairs(observables_of(named)) == {("file_name", "a.sh"), ("sha1", SHA1)}
    bad = make_alert(file=FileInfo(md5="not-a-hash", sha1="abc"))
    assert observables_of(bad) == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "hxxps://login.evil-site[.]com/x",
            {"https://login.evil-site.com/x", "login.evil-site.com", "evil-site.com"},
        ),
        ("https://intranet.corp.local/x", {"https://intranet.corp.local/x"}),  # no public TLD
        ("evil.example.com/login", {"evil.example.com/login", "evil.example.com", "example.com"}),
        ("/index.php?id=1", set()),  # a path alone names no host
        ("HTTP://198.51.100.9:8080/a", {"http://198.51.100.9:8080/a", "198.51.100.9"}),
    ],
)
def test_url_field(url: str, expected: set[str]) -> None:
    found = observables_of(make_alert(url=url))
    assert {o.value for o in found} == expected
    assert {o.role for o in found} <= {"url"}


def test_email_fields() -> None:
    email = EmailInfo(
        sender="PayPal <Service@PayPa1-Secure.com>",
        reply_to="refunds@collect.example.net",
        return_path="<bounce@mailer.example.org>",
        to=["Bob <bob@corp.example>", "undisclosed-recipients:;"],
        cc=["carol@corp.example"],  # .example is no public TLD, so no domain for it either
        received_from=[
            "203.0.113.77",
            "mx.mailer.example.org",
            "from relay.example.net ([198.51.100.8])",
        ],
        subject="Your invoice from billing.example.com",
        urls=["hxxp://paypa1-secure[.]com/verify"],
        attachments=[FileInfo(name="Invoice.zip", sha256=SHA256)],
    )
    found = by_key(observables_of(make_alert(email=email)))
    roles = {key: o.role for key, o in found.items()}
    assert roles == {
        ("email", "service@paypa1-secure.com"): "sender",
        ("domain", "paypa1-secure.com"): "sender",
        ("email", "refunds@collect.example.net"): "reply_to",
        ("domain", "collect.example.net"): "reply_to",
        ("email", "bounce@mailer.example.org"): "return_path",
        ("domain", "mailer.example.org"): "return_path",
        ("email", "bob@corp.example"): "recipient",
        ("email", "carol@corp.example"): "recipient",
        ("ipv4", "203.0.113.77"): "received_from",
        ("hostname", "mx.mailer.example.org"): "received_from",
        ("domain", "relay.example.net"): "received_from",
        ("ipv4", "198.51.100.8"): "received_from",
        ("domain", "billing.example.com"): "text",
        ("url", "http://paypa1-secure.com/verify"): "url",
        ("file_name", "Invoice.zip"): "attachment",
        ("sha256", SHA256): "attachment",
    }


def test_techniques_are_normalized_and_tactics_dropped() -> None:
    alert = make_alert(techniques=["t1059.001", " T1110 ", "TA0001", "attack.t1003", "junk"])
    assert [o.value for o in observables_of(alert)] == ["T1059.001", "T1110", "T1003"]
    assert {o.role for o in observables_of(alert)} == {"technique"}


def test_parser_observables_are_normalized() -> None:
    alert = make_alert(
        observables=[
            Observable(T.IPV4, " 10.0.0.1 "),
            Observable(T.IPV6, "::ffff:8.8.8.8", "dns"),
            Observable(T.DOMAIN, "EVIL.example.", "query"),
            Observable(T.MD5, "bad"),
            Observable(T.SHA1, SHA256.upper(), "file"),
            Observable(T.CVE, "cve-2021-44228"),
            Observable(T.USER, " svc_backup "),
            Observable(T.IPV4, "not an ip"),
        ]
    )
    assert observables_of(alert) == [
        Observable(T.IPV4, "10.0.0.1", None, True),
        Observable(T.IPV4, "8.8.8.8", "dns", False),
        Observable(T.DOMAIN, "evil.example", "query", None),
        Observable(T.SHA256, SHA256, "file", None),
        Observable(T.CVE, "CVE-2021-44228", None, None),
        Observable(T.USER, "svc_backup", None, None),
    ]


def test_observables_of_is_bounded_and_keeps_structured_ones_first() -> None:
    alert = make_alert(
        title="flood",
        description=" ".join(f"10.1.{i // 250}.{i % 250}" for i in range(2000)),
        src=Endpoint(ip="198.51.100.1"),
        email=EmailInfo(to=[f"user{i}@corp.example" for i in range(100_000)]),
    )
    found = observables_of(alert)
    assert len(found) == MAX_OBSERVABLES
    assert found[0] == Observable(T.IPV4, "198.51.100.1", "src", True)
    assert sum(o.role == "recipient" for o in found) == MAX_OBSERVABLES - 1


_FIELD = st.one_of(st.none(), st.text(max_size=60), _INDICATORS)


@given(
    title=st.text(max_size=200),
    description=st.one_of(st.none(), _ANY_TEXT),
    ips=st.lists(_FIELD, min_size=4, max_size=4),
    user=_FIELD,
    url=_FIELD,
    digest=_FIELD,
    sender=_FIELD,
    techniques=st.lists(st.text(max_size=12), max_size=5),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_observables_of_never_raises(
    title: str,
    description: str | None,
    ips: list[str | None],
    user: str | None,
    url: str | None,
    digest: str | None,
    sender: str | None,
    techniques: list[str],
) -> None:
    alert = make_alert(
        title=title,
        description=description,
        src=Endpoint(ip=ips[0], hostname=ips[1]),
        dst=Endpoint(ip=ips[2], hostname=ips[3]),
        user=user,
        url=url,
        file=FileInfo(name=digest, md5=digest, sha256=digest),
        email=EmailInfo(sender=sender, to=[sender or ""], urls=[url or ""]),
        techniques=techniques,
        observables=[Observable(type_, digest or "x") for type_ in ObservableType],
    )
    found = observables_of(alert)
    assert len(found) <= MAX_OBSERVABLES
    assert len({(o.type, o.value) for o in found}) == len(found)
    for observable in found:
        assert isinstance(observable.type, ObservableType)
        assert observable.value
