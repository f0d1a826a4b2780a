"""The e-mail parser: real phish from the corpus, reports built here, and hostile input."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quell.errors import InvalidInput
from quell.ingest.model import Alert, Endpoint, Severity
from quell.ingest.parsers import build_parser, parser_class
from quell.ingest.parsers.base import NotAnAlert, ParseError, RecordKind
from quell.ingest.parsers.email import EmailParser, normalize_url
from tests.fixtures.requirements import corpus_path

PARSER = EmailParser()

INVOICE = b"%PDF-1.4\n% Quell test invoice\n%%EOF\n"
INVOICE_MD5 = "5d8ddfb36b128333787a46d2a48dac5c"
INVOICE_SHA1 = "51ba1770c4fb08c6990fe4e345838f9556dc29a3"
INVOICE_SHA256 = "6ee669eab80bc64aa5b18bfacca5f530f4b606e2035cc278a180cc61cc2601a9"
PIXEL = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
PIXEL_SHA256 = "1f19970f056cd116a5fe3c02422c1ee1ac827136df470b5c89af492620512aa4"


def phish(name: str) -> bytes:
    """A real phishing e-mail from the shared corpus (never copied into the project)."""
    return (corpus_path() / "phishing" / name).read_bytes()


def parse(raw: bytes, **options: Any) -> Alert:
    result = (EmailParser(options) if options else PARSER).parse(raw)
    assert isinstance(result, Alert)
    return result


def report(
    original: bytes,
    *,
    as_eml: bool = False,
    reporter: str = "Alice Analyst <alice@corp.example>",
    subject: str = "FW: suspicious mail",
    date: str | None = "Wed, 20 Sep 2023 08:00:00 +0000",
    message_id: str = "<report-1@corp.example>",
    screenshot: bool = False,
) -> bytes:
    """A user's report: a short note with the original attached, as a mail client sends it."""
    outer = EmailMessage()
    outer["From"] = reporter
    outer["To"] = "phish-report@corp.example"
    outer["Subject"] = subject
    if date:
        outer["Date"] = date
    outer["Message-ID"] = message_id
    outer.set_content("Hi SOC, this looks like phishing to me.\n-- Alice\n")
    if screenshot:
        outer.add_attachment(PIXEL, maintype="image", subtype="gif", filename="screen.gif")
    if as_eml:
        outer.add_attachment(
            original, maintype="application", subtype="octet-stream", filename="original.eml"
        )
    else:
        outer.add_attachment(BytesParser(policy=policy.default).parsebytes(original))
    return outer.as_bytes()


def simple(
    *,
    headers: dict[str, str] | None = None,
    text: str | None = "Hello",
    html: str | None = None,
    attachments: list[tuple[bytes, str, str, str | None]] | None = None,
) -> bytes:
    """A message with the given headers, bodies and (data, maintype, subtype, name) parts."""
    msg = EmailMessage()
    defaults = {
        "From": "Billing <billing@invoices.example>",
        "To": "victim@corp.example",
        "Subject": "Your invoice",
        "Date": "Mon, 02 Oct 2023 10:00:00 +0200",
        "Message-ID": "<m1@invoices.example>",
    }
    for name, value in {**defaults, **(headers or {})}.items():
        if value:
            msg[name] = value
    if text is not None:
        msg.set_content(text)
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    for data, maintype, subtype, name in attachments or []:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def with_headers(raw: bytes, *lines: str) -> bytes:
    """``raw`` with header lines put on top, as relays prepend them."""
    return "".join(f"{line}\r\n" for line in lines).encode() + raw


# -- the registry ------------------------------------------------------------------------------


def test_the_registry_builds_the_email_parser_for_raw_bytes() -> None:
    assert parser_class("email") is EmailParser
    assert EmailParser.record_kind is RecordKind.BYTES
    with pytest.raises(InvalidInput) as caught:
        build_parser("email", {"max_urls": 0})
    assert caught.value.details["field"] == "options.max_urls"
    with pytest.raises(InvalidInput, match="unknown option 'max_url'"):
        build_parser("email", {"max_url": 5})
    with pytest.raises(InvalidInput, match="trusted_authserv_ids"):
        build_parser("email", {"trusted_authserv_ids": "mx.corp.example"})


# -- real phish from the corpus --------------------------------------------------------------


@pytest.mark.requires("corpus")
def test_office365_phish_with_temperror_verdicts() -> None:
    alert = parse(phish("sample-1.eml"))
    email = alert.email
    assert email is not None
    assert alert.title == (
        "Suspicious e-mail: CLIENTE PRIME - BRADESCO LIVELO: Seu cartão tem 92.990 pontos "
        "LIVELO expirando hoje!"
    )
    assert alert.severity is Severity.MEDIUM
    assert alert.time == datetime(2023, 9, 19, 18, 35, 49, tzinfo=UTC)
    assert email.sender == "banco.bradesco@atendimento.com.br"
    assert alert.extra["sender_name"] == "BANCO DO BRADESCO LIVELO"
    assert alert.extra["sender_domain"] == "atendimento.com.br"
    assert email.return_path == "root@ubuntu-s-1vcpu-1gb-35gb-intel-sfo3-06"
    assert email.to == ["phishing@pot"]
    assert email.message_id == "<20230919183549.39DEA3F725@ubuntu-s-1vcpu-1gb-35gb-intel-sfo3-06>"
    # Microsoft writes Authentication-Results without an authserv-id.
    assert email.auth == {
        "spf": "temperror",
        "dkim": "none",
        "dmarc": "temperror",
        "compauth": "fail",
    }
    assert alert.extra["auth_properties"]["dmarc.header.from"] == "atendimento.com.br"
    # The HTML body is base64; links come from href attributes, entities decoded.
    assert email.urls[0] == "https://blog1seguimentmydomaine2bra.me/"
    assert (
        "https://fonts.googleapis.com/css2?family=Signika:wght@300;500;700&display=swap"
        in email.urls
    )
    assert not any(url.endswith(".png") for url in email.urls)  # relative images are not URLs
    # The client IP that Microsoft's SPF check names, found again in the Received chain.
    assert alert.src == Endpoint(ip="137.184.34.4")
    assert email.received_from[-1] == "137.184.34.4"
    assert email.received_from[0] == "sa3pr19mb7370.namprd19.prod.outlook.com"
    assert email.attachments == []
    assert alert.uid == email.message_id


@pytest.mark.requires("corpus")
def test_phish_with_a_different_reply_to_and_html_links() -> None:
    alert = parse(phish("sample-200.eml"))
    email = alert.email
    assert email is not None
    assert email.sender == "newsmail@appsh.serenitepure.fr"
    assert email.reply_to == "news@aichakandisha.com"
    assert email.return_path == "returntbmXkbA4@comet-sas.fr"
    assert email.subject == "Ik denk dat dit wat voor jou is"
    assert email.auth == {"spf": "pass", "dkim": "none", "dmarc": "none", "compauth": "fail"}
    assert "http://safesecurelog.com/?a=77&c=60&s1=soukaina26/12&email=phishing@pot" in email.urls
    assert "https://nospamlink.com/ebc449f0-c9ef-41fb-bc65-2183719864bc/" in email.urls
    assert len(email.urls) == len(set(email.urls))
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email.headers["X-Report-Abuse"] == "abuse@e.serenitepure.fr"
    assert email.headers["Sender"] == '"Rolanda" <news@appsh.serenitepure.fr>'
    assert alert.src == Endpoint(ip="162.19.55.158")
    assert "bsd-web.de" in email.received_from
    assert alert.time == datetime(2022, 12, 28, 19, 55, 28, tzinfo=UTC)


@pytest.mark.requires("corpus")
def test_advance_fee_fraud_from_a_compromised_account() -> None:
    alert = parse(phish("sample-349.eml"))
    email = alert.email
    assert email is not None
    assert email.sender == "nelson@embrapav.com.br"
    assert email.reply_to == "mrkennedyuz@gmail.com"
    assert email.to == []  # "Undisclosed recipients:;" is an empty group
    assert email.headers["X-Mailer"] == "Microsoft Outlook Express 6.00.2600.0000"
    assert email.auth["spf"] == "pass"
    assert email.auth["dmarc"] == "pass"
    assert alert.time == datetime(2023, 9, 13, 0, 14, 1, tzinfo=UTC)  # -0700 in the header
    assert alert.src == Endpoint(ip="131.0.44.51")
    # Deeper in the chain: the webmail client that used the stolen account.
    assert email.received_from.index("131.0.44.51") < email.received_from.index("194.180.48.244")
    hops = alert.extra["received"]
    assert {"from": "User", "ip": "194.180.48.244", "by": "mail.pontonettelecom.com.br"} in hops
    assert email.urls == []


@pytest.mark.requires("corpus")
def test_multipart_phish_with_encoded_subject_and_dkim_only() -> None:
    alert = parse(phish("sample-558.eml"))
    email = alert.email
    assert email is not None
    assert email.subject == "[Bradesco Saúde] (1) motivo para ser nosso cliente"
    assert email.sender == "luciana-saudebradesco-57@adquiraseuplanobr.com.br"
    assert email.to == ["pcp2@vtrvettor.com.br"]
    assert email.auth == {"dkim": "pass", "dkim-adsp": "signed"}
    assert alert.extra["dkim_domains"] == ["adquiraseuplanobr.com.br"]
    link = (
        "http://wo.adquiraseuplanobr.com.br/?qs=24r2x2x2p2d4s2r2w2e42473x5a4t5q2a3p4o4r426m506z5"
        "h4k4s284m4m42474m45354b4l436a4o4e5j494t4g4u514f4l4i5w5v2k5m4q5m284l4&lin=11430"
    )
    # Found in the plain text part as "[Quero cotar](<link>)": the closing bracket is not kept.
    assert email.urls[0] == link
    assert len(email.urls) == 3  # the same three links in text/plain and text/html, once each
    # No SPF check to confirm an IP: the first public address under the provider's private hops.
    assert alert.src == Endpoint(
        ip="193.223.106.210", hostname="cloud7574939.adquiraseuplanobr.com.br"
    )
    assert email.received_from[:2] == ["arnie0140.email.locaweb.com.br", "10.31.68.134"]
    assert alert.time == datetime(2021, 6, 13, 9, 26, 11, tzinfo=UTC)


# -- reports -----------------------------------------------------------------------------------


@pytest.mark.requires("corpus")
def test_a_report_with_the_original_attached_is_about_the_original() -> None:
    alert = parse(report(phish("sample-558.eml"), screenshot=True))
    email = alert.email
    assert email is not None
    assert alert.title == "Reported phishing: [Bradesco Saúde] (1) motivo para ser nosso cliente"
    assert alert.rule_uid == "email.reported_phishing"
    assert alert.extra["reported_by"] == "alice@corp.example"
    assert alert.extra["report_subject"] == "FW: suspicious mail"
    assert alert.extra["report_comment"].startswith("Hi SOC, this looks like phishing")
    assert alert.uid == "<report-1@corp.example>"  # the record is the report
    assert email.message_id == (
        "<t534k4y24346k4j4s4l5y5t4w5p4z334l4g4q2b4y5@adquiraseuplanobr.com.br>"
    )
    assert email.sender == "luciana-saudebradesco-57@adquiraseuplanobr.com.br"
    assert email.auth == {"dkim": "pass", "dkim-adsp": "signed"}
    assert alert.time == datetime(2021, 6, 13, 9, 26, 11, tzinfo=UTC)  # the original's Date
    assert alert.src is not None
    assert alert.src.ip == "193.223.106.210"
    assert email.attachments == []  # the reporter's screenshot is not the phish's


@pytest.mark.requires("corpus")
def test_a_report_with_an_eml_attachment() -> None:
    alert = parse(report(phish("sample-1.eml"), as_eml=True))
    email = alert.email
    assert email is not None
    assert alert.title.startswith("Reported phishing: CLIENTE PRIME - BRADESCO LIVELO")
    assert email.sender == "banco.bradesco@atendimento.com.br"
    assert email.auth["spf"] == "temperror"
    assert "https://blog1seguimentmydomaine2bra.me/" in email.urls
    assert alert.extra["reported_by"] == "alice@corp.example"
    assert alert.src == Endpoint(ip="137.184.34.4")


@pytest.mark.requires("corpus")
def test_a_forwarded_report_is_unwrapped_to_the_original() -> None:
    inner = report(phish("sample-349.eml"), message_id="<report-inner@corp.example>")
    outer = report(
        inner,
        reporter="Helpdesk <helpdesk@corp.example>",
        subject="FW: FW: suspicious mail",
        message_id="<report-outer@corp.example>",
    )
    alert = parse(outer)
    assert alert.email is not None
    assert alert.email.sender == "nelson@embrapav.com.br"
    assert alert.extra["reported_by"] == "alice@corp.example"  # who saw the phish
    assert alert.extra["forwarded_by"] == ["helpdesk@corp.example"]
    assert alert.uid == "<report-outer@corp.example>"


def test_an_attached_message_in_base64_as_outlook_sends_it() -> None:
    original = simple(html='<a href="https://login.evil.example/o365">Sign in</a>', text=None)
    encoded = base64.encodebytes(original).replace(b"\n", b"\r\n")
    raw = (
        b"From: bob@corp.example\r\nTo: soc@corp.example\r\nSubject: phish?\r\n"
        b"Date: Tue, 03 Oct 2023 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b1\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--b1--\r\n"
    )
    alert = parse(raw)
    assert alert.email is not None
    assert alert.title == "Reported phishing: Your invoice"
    assert alert.email.urls == ["https://login.evil.example/o365"]
    assert alert.extra["reported_by"] == "bob@corp.example"


def test_unwrapping_can_be_turned_off_for_a_honeypot() -> None:
    raw = report(simple())
    alert = parse(raw, unwrap_reports=False)
    assert alert.title == "Suspicious e-mail: FW: suspicious mail"
    assert alert.email is not None
    assert alert.email.attachments[0].mime_type == "message/rfc822"


def test_a_bounce_is_not_taken_for_a_report() -> None:
    bounce = EmailMessage()
    bounce["From"] = "MAILER-DAEMON@mx.corp.example"
    bounce["Subject"] = "Undelivered Mail Returned to Sender"
    bounce["Date"] = "Tue, 03 Oct 2023 09:00:00 +0000"
    bounce.set_content("could not deliver")
    bounce.add_attachment(BytesParser(policy=policy.default).parsebytes(simple()))
    bounce.replace_header("Content-Type", bounce["Content-Type"].replace("mixed", "report"))
    alert = parse(bounce.as_bytes())
    assert alert.title == "Suspicious e-mail: Undelivered Mail Returned to Sender"


# -- attachments and URLs --------------------------------------------------------------------


def test_attachments_are_hashed_and_inline_text_is_not_an_attachment() -> None:
    html_attachment = (
        b'<html><form action="hxxps://creds[.]evil.example/post"><input name=p></form></html>'
    )
    raw = simple(
        attachments=[
            (INVOICE, "application", "pdf", "Invoice 2023-10.pdf"),
            (PIXEL, "image", "gif", None),
            (html_attachment, "text", "html", "secure-message.html"),
        ]
    )
    alert = parse(raw)
    email = alert.email
    assert email is not None
    invoice, pixel, page = email.attachments
    assert invoice.name == "Invoice 2023-10.pdf"
    assert invoice.mime_type == "application/pdf"
    assert invoice.size == len(INVOICE) == 36
    assert invoice.md5 == INVOICE_MD5
    assert invoice.sha1 == INVOICE_SHA1
    assert invoice.sha256 == INVOICE_SHA256
    assert pixel.name is None
    assert pixel.sha256 == PIXEL_SHA256
    assert page.name == "secure-message.html"
    # An attached HTML page is read for links too: credential phish hides its form there.
    assert email.urls == ["https://creds.evil.example/post"]


def test_encoded_attachment_names_are_decoded() -> None:
    raw = simple(attachments=[(INVOICE, "application", "pdf", "Fattura né 12.pdf")])
    alert = parse(raw)
    assert alert.email is not None
    assert alert.email.attachments[0].name == "Fattura né 12.pdf"


def test_attachment_count_and_hashing_are_bounded() -> None:
    parts = [(INVOICE + bytes([n]), "application", "octet-stream", f"f{n}.bin") for n in range(5)]
    alert = parse(simple(attachments=parts), max_attachments=3, max_hash_bytes=80)
    email = alert.email
    assert email is not None
    assert [a.name for a in email.attachments] == ["f0.bin", "f1.bin", "f2.bin"]
    assert alert.extra["attachments_dropped"] == 2
    assert [a.sha256 is not None for a in email.attachments] == [True, True, False]
    assert email.attachments[2].size == 37
    assert alert.extra["attachments_unhashed"] == 1


def test_urls_from_html_attributes_and_text_refanged_and_deduplicated() -> None:
    html = """<html><head><meta http-equiv="Refresh" content="0; url=https://redirect.example/r">
    <base href="https://ignored.example/"></head><body background="https://bg.example/i.jpg">
    <a href="https://login.evil.example/?u=a&amp;t=b">Sign in</a>
    <a href="mailto:help@corp.example">mail</a> <a href="#top">top</a> <img src="logo.png">
    <img src="https://cdn.evil.example/pixel.gif?id=7"><a href="javascript:void(0)">x</a>
    <form action="https://collect.evil.example/p"><button formaction="https://alt.evil.example/">
    </button></form><!-- https://in-a-comment.example/ -->
    <p>Or paste hxxps://evil[.]example/path, or https://login.evil.example/?u=a&amp;t=b.</p>
    <a href=" https://spaced.example/a
    b ">wrapped</a></body></html>"""
    text = (
        "Visit (https://paren.example/x) or https://trail.example/y.\nhxxp://def[.]example[.]org/"
    )
    alert = parse(simple(text=text, html=html))
    assert alert.email is not None
    assert alert.email.urls == [
        "https://paren.example/x",
        "https://trail.example/y",
        "http://def.example.org/",
        "https://redirect.example/r",
        "https://ignored.example/",
        "https://bg.example/i.jpg",
        "https://login.evil.example/?u=a&t=b",
        "https://cdn.evil.example/pixel.gif?id=7",
        "https://collect.evil.example/p",
        "https://alt.evil.example/",
        "https://spaced.example/ab",
        "https://evil.example/path",
    ]


def test_the_url_count_is_bounded() -> None:
    text = "\n".join(f"https://host{n}.example/" for n in range(30))
    alert = parse(simple(text=text), max_urls=10)
    assert alert.email is not None
    assert len(alert.email.urls) == 10
    assert alert.email.urls[-1] == "https://host9.example/"
    assert alert.extra["urls_dropped"] == 20


@pytest.mark.parametrize(
    ("candidate", "bare", "expected"),
    [
        ("hxxps://evil[.]example/a", False, "https://evil.example/a"),
        ("https://a.example/b).", True, "https://a.example/b"),
        ("https://a.example/(b)", True, "https://a.example/(b)"),
        ("https://a.example/b).", False, "https://a.example/b)."),
        ("//no-scheme.example/", False, None),
        ("mailto:a@b.example", False, None),
        ("http://[::1", False, None),
        ("https://" + "a" * 5000 + ".example/", False, None),
    ],
)
def test_normalize_url(candidate: str, bare: bool, expected: str | None) -> None:
    assert normalize_url(candidate, bare=bare) == expected


def test_pathological_html_does_not_stall_the_parser() -> None:
    # Python 3.11's html.parser takes minutes on this unless unclosed tags are defused first.
    html = "<a " * 25000 + '<a href="https://after.example/">x</a>' + "<!--" * 20000
    alert = parse(simple(text=None, html=html))
    assert alert.email is not None
    assert "https://after.example/" in alert.email.urls


# -- authentication and the source ---------------------------------------------------------


def test_the_topmost_authentication_results_win_and_a_dkim_pass_counts() -> None:
    raw = with_headers(
        simple(),
        "Authentication-Results: mx.corp.example; spf=softfail smtp.mailfrom=invoices.example;"
        " dkim=fail (bad signature) header.d=other.example; dkim=pass header.d=invoices.example;"
        " dmarc=fail (p=REJECT) header.from=invoices.example; arc=none",
        "Received: from mail.invoices.example (mail.invoices.example [198.51.100.7])"
        " by mx.corp.example with ESMTPS id 1; Mon, 02 Oct 2023 08:00:05 +0000",
    )
    # A header the sender put below our relays claims a pass; it is read after ours.
    raw = raw.replace(
        b"From: ",
        b"Authentication-Results: forged.example; spf=pass; dmarc=pass; bimi=pass\r\nFrom: ",
        1,
    )
    alert = parse(raw)
    assert alert.email is not None
    assert alert.email.auth == {
        "spf": "softfail",
        "dkim": "pass",
        "dmarc": "fail",
        "arc": "none",
        "bimi": "pass",
    }
    assert alert.extra["auth_properties"]["dkim.header.d"] == "other.example"
    # Only our own servers, when configured.
    trusted = parse(raw, trusted_authserv_ids=["mx.corp.example"])
    assert trusted.email is not None
    assert "bimi" not in trusted.email.auth


def test_received_spf_gives_the_spf_verdict_and_confirms_the_client() -> None:
    raw = with_headers(
        simple(),
        "Received-SPF: Fail (mx.corp.example: domain of invoices.example does not designate"
        " 185.220.101.9 as permitted sender) client-ip=185.220.101.9; helo=[185.220.101.9];",
        "Received: from relay.partner.example (relay.partner.example [91.198.174.2])"
        " by mx.corp.example; Mon, 02 Oct 2023 08:00:06 +0000",
        "Received: from [185.220.101.9] (unknown [185.220.101.9])"
        " by relay.partner.example; Mon, 02 Oct 2023 08:00:05 +0000",
    )
    alert = parse(raw)
    assert alert.email is not None
    assert alert.email.auth == {"spf": "fail"}
    # The SPF check names 185.220.101.9, so it is the source, though 91.198.174.2 is nearer.
    assert alert.src == Endpoint(ip="185.220.101.9")
    assert alert.email.received_from == ["relay.partner.example", "91.198.174.2", "185.220.101.9"]


def test_no_source_without_a_routable_hop() -> None:
    raw = with_headers(
        simple(),
        "Received: from laptop.corp.example (laptop.corp.example [10.0.0.5])"
        " by mx.corp.example; Mon, 02 Oct 2023 08:00:06 +0000",
    )
    alert = parse(raw)
    assert alert.src is None
    assert alert.email is not None
    assert alert.email.received_from == ["laptop.corp.example", "10.0.0.5"]


def test_ipv6_hops_and_the_rdns_name_are_read() -> None:
    raw = with_headers(
        simple(),
        "Received: from mail-out.example (mail-out.example. [IPv6:2001:db8:4860::5])"
        " by mx.corp.example; Mon, 02 Oct 2023 08:00:06 +0000",
        "Received: from helo-lies.example (host.real.example [2a00:1450:4864:20::12f])"
        " by mail-out.example; Mon, 02 Oct 2023 08:00:05 +0000",
    )
    alert = parse(raw)
    # 2001:db8::/32 is documentation space, not routable, so the next hop is the source.
    assert alert.src == Endpoint(ip="2a00:1450:4864:20::12f", hostname="host.real.example")


# -- time --------------------------------------------------------------------------------------


def test_without_a_date_the_report_date_is_used() -> None:
    original = simple(headers={"Date": ""})
    alert = parse(report(original))
    assert alert.time == datetime(2023, 9, 20, 8, 0, tzinfo=UTC)


def test_without_any_date_the_received_timestamp_is_used() -> None:
    raw = with_headers(
        simple(headers={"Date": "yesterday"}),
        "Received: from a.example (a.example [192.0.2.1]) by b.example;"
        " Tue, 03 Oct 2023 11:12:13 +0100",
    )
    assert parse(raw).time == datetime(2023, 10, 3, 10, 12, 13, tzinfo=UTC)


def test_a_message_without_any_time_is_a_parse_error() -> None:
    with pytest.raises(ParseError) as caught:
        PARSER.parse(simple(headers={"Date": ""}))
    assert caught.value.field == "Date"


# -- bad input ---------------------------------------------------------------------------------


def test_a_message_over_the_size_limit_is_refused_naming_the_limit() -> None:
    raw = simple(text="x" * 5000)
    with pytest.raises(ParseError) as caught:
        EmailParser({"max_bytes": 4096}).parse(raw)
    assert "max_bytes limit of 4096" in caught.value.reason
    assert caught.value.field == "max_bytes"


def test_an_enormous_content_type_is_refused() -> None:
    raw = b"From: a@b.example\r\nContent-Type: text/plain; " + b"a=b; " * 5000 + b"\r\n\r\nx"
    with pytest.raises(ParseError) as caught:
        PARSER.parse(raw)
    assert caught.value.field == "Content-Type"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("From: a@b.example\r\n\r\nhi", "must be bytes, not str"),
        (b"   \r\n", "empty"),
        (b"\x00\x01\x02 binary junk", "not an RFC 5322 message"),
        (b'{"alert": "this is JSON"}', "not an RFC 5322 message"),
    ],
)
def test_what_is_not_a_message_is_a_parse_error(record: Any, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        PARSER.parse(record)


def test_raw_8bit_and_nul_in_headers_become_clean_text() -> None:
    raw = (
        b"From: =?x-unknown?q?M=FCller?= <m\xfcller@evil.example>\r\n"
        b"Subject: Caf\xc3\xa9 \xff\x00 offer\r\n"
        b"Date: Tue, 03 Oct 2023 09:00:00 +0000\r\n"
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n"
        b"Visit https://x.example/\xe9 now\r\n"
    )
    alert = parse(raw)
    assert alert.email is not None
    assert alert.email.subject == "Café \ufffd offer"
    assert alert.email.urls == ["https://x.example/\ufffd"]
    _assert_serializable(alert)


def test_broken_mime_is_tolerated() -> None:
    raw = (
        b"From: a@evil.example\r\nSubject: broken\r\nDate: Tue, 03 Oct 2023 09:00:00 +0000\r\n"
        b'Content-Type: multipart/mixed; boundary="never-used"\r\n\r\n'
        b"no boundary here, just https://still-found.example/\r\n"
    )
    alert = parse(raw)
    assert alert.email is not None
    assert alert.email.urls == ["https://still-found.example/"]
    assert alert.extra["mime_defects"]


# -- property-based ------------------------------------------------------------------------------


def _assert_serializable(alert: Alert) -> None:
    """Valid UTF-8 without NUL everywhere, so that both databases accept the alert."""
    data = dataclasses.asdict(alert)
    data.pop("raw")
    encoded = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)  # refuses lone surrogates
    assert b"\\u0000" not in encoded


def _check(raw: bytes, **options: Any) -> None:
    try:
        result = (EmailParser(options) if options else PARSER).parse(raw)
    except ParseError as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason.strip(), "a ParseError must say why"
        return
    assert isinstance(result, Alert | NotAnAlert)
    if isinstance(result, Alert):
        assert result.time.tzinfo is not None
        _assert_serializable(result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_nothing_but_parse_error(raw: bytes) -> None:
    _check(raw)


HEADER_NAMES = [
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Return-Path",
    "Subject",
    "Date",
    "Message-ID",
    "Received",
    "Authentication-Results",
    "Received-SPF",
    "DKIM-Signature",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "MIME-Version",
    "X-Mailer",
]
header_values = st.text(
    alphabet=st.sampled_from(list("abc@<>()[];:=\"',.\\ -/*?%09\t\xe9\u2603")) | st.characters(),
    max_size=80,
) | st.sampled_from(
    [
        "multipart/mixed; boundary=b",
        "message/rfc822",
        "text/html; charset=utf-8",
        "base64",
        "quoted-printable",
        "attachment; filename=x.eml",
        "=?utf-8?b?w6k=?=",
        "mx.example; spf=pass; dkim=fail",
        "from a (b [1.2.3.4]) by c; Tue, 03 Oct 2023 09:00:00 +0000",
    ]
)
headered = st.tuples(
    st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values), max_size=12),
    st.text(max_size=300) | st.sampled_from(["--b\r\nContent-Type: message/rfc822\r\n\r\n"]),
).map(
    lambda parts: (
        "".join(f"{name}: {value}\r\n" for name, value in parts[0]) + "\r\n" + parts[1]
    ).encode("utf-8", "surrogatepass")
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headered)
def test_random_headers_and_bodies_raise_nothing_but_parse_error(raw: bytes) -> None:
    _check(raw)


def _seed_report() -> bytes:
    original = simple(
        html='<a href="https://evil.example/">x</a><img src="https://evil.example/p.gif">',
        attachments=[(INVOICE, "application", "pdf", "invoice.pdf")],
    )
    return report(original, screenshot=True)


SEED = _seed_report()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_reports_raise_nothing_but_parse_error(data: st.DataObject) -> None:
    raw = bytearray(SEED)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip":
            raw[position] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[position : position + data.draw(st.integers(1, 200))]
        elif action == "insert":
            raw[position:position] = data.draw(
                st.sampled_from(
                    [b"\r\n", b"--", b"=?", b"<", b"\x00", b"Content-Type: message/rfc822\r\n"]
                )
            )
        else:
            del raw[position:]
        if not raw:
            return
    _check(bytes(raw), max_urls=5, max_attachments=2)


@pytest.mark.requires("corpus")
def test_every_corpus_message_parses_the_same_inside_a_report() -> None:
    for path in sorted((corpus_path() / "phishing").glob("*.eml")):
        direct = parse(path.read_bytes())
        reported = parse(report(path.read_bytes()))
        assert direct.email is not None
        assert reported.email is not None
        assert reported.email.sender == direct.email.sender
        assert reported.email.urls == direct.email.urls
        assert reported.email.auth == direct.email.auth
        _assert_serializable(direct)
