"""Indicators in free text: the scanners behind :func:`extract_text`.

Speed comes from anchoring every scanner on a literal the regex engine finds with a fast
substring search (``://``, ``@``, ``.``, ``CVE-``, ``T1``) and walking back a few characters in
Python for the part before the anchor, instead of testing a pattern at every character. Each
pattern consumes a whole run possessively, so no input makes a scan quadratic.
"""

from __future__ import annotations

import re
from typing import Final

from quell.ingest.model import ObservableType
from quell.ingest.observables._fang import refang
from quell.ingest.observables._psl import public_suffix_labels, tlds
from quell.ingest.observables._values import Collector, add_url

MAX_TEXT_CHARS: Final = 65536
"""Only the first 64 Ki characters of a text are scanned (cut back to whitespace)."""

# -- URLs --------------------------------------------------------------------------------------
# Up to the first character that cannot be in a URL written in text: whitespace, quotes, angle
# brackets, backslash (JSON escapes, Windows paths) and the RFC 3986 "unwise" set.
_URL = re.compile(r"://([^\s\"'<>\\^`{|}]{1,4096}+)")

# -- dotted names: domains and IPv4 ------------------------------------------------------------
# From a dot, the rest of the dotted run ("evil.example.com" is found at ".example.com"; the
# first label is walked back to); a trailing sentence dot is not part of it. Group 1 is the
# tail of an IPv4 address (".b.c.d" of "a.b.c.d"), group 2 the last label of a name, the TLD
# candidate. The second branch takes any dotted run, so each run is read once.
_DOTTED = re.compile(
    r"\.(?:([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?![A-Za-z0-9-]|\.[A-Za-z0-9-])"
    r"|(?:[A-Za-z0-9-]++\.(?=[A-Za-z0-9-]))*+([A-Za-z0-9-]++))"
)
# Matched on the reversed text from just before the first dot: the first label, backwards.
_LABEL_BACK = re.compile(r"[A-Za-z0-9-]{1,64}")
# Words that put a version, not an address, after them: "version 1.2.3.4", "build 10.0.1.2".
_VERSION_WORDS: Final = ("version", "ver", "v", "build", "release", "rev", "firmware", "fw")
# TLDs that are also common file extensions in alerts: a two-label name under one of them is
# taken for a file name (invoice.zip, clip.mov, setup.py, install.sh, libx.so, Main.java,
# update.cab, notes.one, README.md); three labels or more (cdn.evil.zip) is a domain.
_FILE_TLDS: Final = frozenset({"zip", "mov", "py", "sh", "so", "java", "cab", "one", "md"})
# TLDs that in alert text are mostly field or member names (ECS user.name, host.id,
# dns.question.name, event.data, ADODB.Stream, obj.call): a name under one of them counts only
# below a public suffix of two labels or more (kemkes.go.id), or from a URL or e-mail.
_CODE_TLDS: Final = frozenset(
    {"name", "id", "data", "email", "target", "events", "shell", "stream", "call", "read"}
    | {"open", "map", "post", "new", "link", "page", "run", "host", "network", "app"}
)
_AMBIGUOUS_TLDS: Final = _FILE_TLDS | _CODE_TLDS

# -- e-mail addresses --------------------------------------------------------------------------
_EMAIL_DOMAIN = re.compile(r"@([A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)++)")
_LOCAL_BACK = re.compile(r"[A-Za-z0-9._%+-]{1,65}")

# -- IPv6 --------------------------------------------------------------------------------------
# From the first colon of a run of hex digits, colons and dots (the leading group is walked back
# to); ipaddress decides. Anchoring on ":" keeps the engine off the many hex-looking words.
# The first colon must start "::" or "x:y:" (three colons close together), which a time such
# as 12:34:56 never does, so most colons are rejected inside the engine.
_IPV6 = re.compile(
    r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:.]{0,39}+(?:%[\w.-]{1,32}+)?"
)
_HEX_BACK = re.compile(r"[0-9A-Fa-f]{0,5}")
_BYTE_STRING = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})+")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")

# -- hashes ------------------------------------------------------------------------------------
# Hex runs are found on a byte mask of the text (hex digit -> "x", anything else, non-ASCII
# included, -> " "): C-level searches for 32 "x" find each run of 32 or more, and only those
# runs are looked at in Python. A run's exact length picks the type, so the first 32
# characters of a SHA-256 are never an MD5.
_HEX_MASK = bytes(0x78 if chr(i) in "0123456789abcdefABCDEF" else 0x20 for i in range(256))
_HEX_32 = b"x" * 32
_HASH_TYPES: Final = {32: ObservableType.MD5, 40: ObservableType.SHA1, 64: ObservableType.SHA256}
_ASCII_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

# -- CVE and ATT&CK ----------------------------------------------------------------------------
# Patterns start with a literal (one per letter case) so that the engine can search for it fast;
# a case-insensitive pattern would be tried at every character.
_CVE_TAIL = r"-([0-9]{4})-([0-9]{4,7})(?![0-9A-Za-z_])"
_CVES = (re.compile(r"CVE(?<![\w-]CVE)" + _CVE_TAIL), re.compile(r"cve(?<![\w-]cve)" + _CVE_TAIL))
# Enterprise and mobile techniques are T1001-T1699, ICS ones T0800-T0899. Lower case is taken in
# Sigma's tag form only ("attack.t1059.001").
_TECHNIQUE_TAIL = r"(1[0-9]{3}|0[89][0-9]{2})(\.[0-9]{3})?(?![\w-]|\.[0-9])"
_TECHNIQUE_UPPER = re.compile(r"T(?<![\w-]T)" + _TECHNIQUE_TAIL)
_TECHNIQUE_SIGMA = re.compile(r"attack\.t" + _TECHNIQUE_TAIL)
_ATTACK_WORDS: Final = ("attack", "mitre", "att&ck", "technique", "tactic")  # likeliest first


def bounded(text: str) -> str:
    """The part of ``text`` that is scanned: at most :data:`MAX_TEXT_CHARS` characters.

    The cut goes back to the last whitespace in the final KiB, so the last indicator kept is a
    whole one and not ``evil.co`` from ``evil.com``.
    """
    if len(text) <= MAX_TEXT_CHARS:
        return text
    if text[MAX_TEXT_CHARS].isspace():
        return text[:MAX_TEXT_CHARS]
    head = text[:MAX_TEXT_CHARS]
    floor = MAX_TEXT_CHARS - 1024
    cut = max(head.rfind(" ", floor), head.rfind("\n", floor), head.rfind("\t", floor))
    return head[:cut] if cut > 0 else head


def scan(text: str, role: str | None, collector: Collector) -> None:
    """Find every indicator in ``text`` (already bounded) and add it to ``collector``."""
    text = refang(text)
    # Single-character "in" tests are memchr-fast; the scanners themselves search for their
    # literal anchors, which costs about as much as a longer "in" test would.
    if "/" in text:
        _scan_urls(text, role, collector)
    if "@" in text:
        _scan_emails(text, role, collector)
    if "." in text:
        _scan_dotted(text, role, collector)
    if ":" in text:
        _scan_ipv6(text, role, collector)
    if len(text) >= 32:
        _scan_hashes(text, role, collector)
    if "-" in text:
        for pattern in _CVES:
            for match in pattern.finditer(text):
                collector.add(ObservableType.CVE, f"CVE-{match[1]}-{match[2]}", role)
    if "T" in text or "t" in text:
        _scan_techniques(text, role, collector)


def _scan_urls(text: str, role: str | None, collector: Collector) -> None:
    seen: set[str] = set()
    for match in _URL.finditer(text):
        if collector.full:
            return
        start = match.start()
        head = text[max(0, start - 5) : start].lower()
        if head.endswith("https"):
            first = start - 5
        elif head.endswith("http"):
            first = start - 4
        elif head.endswith("ftp"):
            first = start - 3
        else:
            continue
        if first and (text[first - 1].isalnum() or text[first - 1] == "_"):
            continue  # "xhttp://", "sftp://": not a scheme we take
        rest = match[1]
        if rest not in seen:
            seen.add(rest)
            add_url(collector, text[first:start], rest, role)


def _scan_emails(text: str, role: str | None, collector: Collector) -> None:
    known = tlds()
    for match in _EMAIL_DOMAIN.finditer(text):
        if collector.full:
            return
        domain = match[1]
        tld = domain[domain.rfind(".") + 1 :].lower()
        if tld not in known or len(domain) > 253 or domain[0] == "-" or domain[-1] == "-":
            continue
        if "-." in domain or ".-" in domain:
            continue
        at = match.start()
        back = _LOCAL_BACK.match(text[max(0, at - 65) : at][::-1])
        if back is None or back.end() > 64:
            continue
        local = text[at - back.end() : at].lstrip(".")
        first = at - len(local)
        if not local or local[-1] == "." or ".." in local:
            continue
        if first and (text[first - 1].isalnum() or text[first - 1] == "_"):
            continue
        if first and text[first - 1] in ":/" and _in_url_authority(text, first):
            continue  # http://user:pw@host/, http://paypal.com@evil.example/: not a mailbox
        end = match.end()
        if end < len(text) and (text[end].isalnum() or text[end] == "_"):
            continue
        collector.add(ObservableType.EMAIL, f"{local}@{domain}".lower(), role)


def _in_url_authority(text: str, position: int) -> bool:
    head = text[max(0, position - 256) : position]
    token = head[max(head.rfind(" "), head.rfind("\n"), head.rfind("\t")) + 1 :]
    scheme_end = token.find("://")
    return scheme_end >= 0 and "/" not in token[scheme_end + 3 :]


def _scan_dotted(text: str, role: str | None, collector: Collector) -> None:
    known = tlds()
    size = len(text)
    reverse = ""  # the text reversed, made on the first candidate: most texts have a few
    seen: set[str] = set()
    found, limit = collector.found, collector.limit
    for match in _DOTTED.finditer(text):
        last = match[2]
        if last is not None:
            tld = last.lower()
            if tld not in known:
                continue  # invoice.pdf, 1.2.3, OpenSSH_8.9p1: no TLD, or no name at all
            if last[0].isupper() and not last.isupper():
                continue  # WScript.Shell, System.Net, Microsoft.Windows: code, not a name
            if tld in _AMBIGUOUS_TLDS and match[0].count(".") == 1:
                continue  # invoice.zip, setup.py, user.name: see _FILE_TLDS and _CODE_TLDS
        if not reverse:
            reverse = text[::-1]
        dot, end = match.span()
        back = _LABEL_BACK.match(reverse, size - dot)
        if back is None:
            continue
        begin = size - back.end()
        if dot - begin > 63:
            continue
        before = text[begin - 1] if begin else " "
        after = text[end] if end < size else " "
        if before in ".@_" or after in "@_" or before.isalnum() or after.isalnum():
            continue  # part of a longer token, an e-mail address's domain, a local part
        name = text[begin:end]
        if name in seen:
            continue
        if len(found) >= limit:
            return
        seen.add(name)
        if last is None:
            _add_ipv4(text, begin, name, role, collector)
        else:
            _add_text_domain(name, last, role, collector)


def _add_ipv4(text: str, begin: int, name: str, role: str | None, collector: Collector) -> None:
    if not name[: name.find(".")].isdigit():
        return
    # Only a letter that ends one of the words (versio-n, ve-r, v, buil-d…) before at most
    # three separators can make it a version; most addresses follow "from ", "src " and such.
    stop = begin - 1
    while stop >= 0 and begin - stop <= 3 and text[stop] in " \t:=#":
        stop -= 1
    if stop >= 0 and stop < begin - 1 and text[stop] in "nrdvewNRDVEW":
        head = text[max(0, stop - 8) : stop + 1].lower()
        for word in _VERSION_WORDS:
            if head.endswith(word) and not head[: -len(word)][-1:].isalpha():
                return
    collector.add_ip(name, role)


def _add_text_domain(name: str, tld: str, role: str | None, collector: Collector) -> None:
    if len(name) > 253 or name[0] == "-" or name[-1] == "-" or ".-" in name or "-." in name:
        return
    value = name.lower()
    tld = tld.lower()
    if tld in _FILE_TLDS and value.count(".") == 1:
        return
    if tld in _CODE_TLDS and public_suffix_labels(value) < 2:
        return
    collector.add(ObservableType.DOMAIN, value, role)


def _scan_ipv6(text: str, role: str | None, collector: Collector) -> None:
    size = len(text)
    for match in _IPV6.finditer(text):
        if collector.full:
            return
        end = match.end()
        if end < size and (text[end] in _IPV6_CHARS or (text[end].isalnum() or text[end] == "_")):
            continue  # longer than any address, or glued to a word
        colon = match.start()
        lead = _HEX_BACK.match(text[max(0, colon - 5) : colon][::-1])
        begin = colon - (lead.end() if lead else 0)
        if colon - begin > 4 or (
            begin
            and (text[begin - 1] in ":." or (text[begin - 1].isalnum() or text[begin - 1] == "_"))
        ):
            continue
        candidate = text[begin:end]
        zone = candidate.find("%")
        core = (candidate if zone < 0 else candidate[:zone]).rstrip(".")
        if core.endswith(":") and not core.endswith("::"):
            core = core[:-1]
        if "::" not in core:
            if core.count(":") < 6:
                continue  # a time (12:34:56) or a MAC address
            if _BYTE_STRING.fullmatch(core):
                continue  # a certificate serial or key id, 5C:9C:E1:09:78:87:F8:07
        collector.add_ip(core, role)


def _scan_hashes(text: str, role: str | None, collector: Collector) -> None:
    # "replace" turns each non-ASCII character into one "?", so mask offsets are text offsets.
    mask = text.encode("ascii", "replace").translate(_HEX_MASK)
    size = len(mask)
    start = mask.find(_HEX_32)
    while start >= 0 and not collector.full:
        end = mask.find(b" ", start + 32)
        if end < 0:
            end = size
        type_ = _HASH_TYPES.get(end - start)
        # A letter or digit on either side makes it part of a longer token (base64, an id).
        glued = (start and text[start - 1] in _ASCII_ALNUM) or (
            end < size and text[end] in _ASCII_ALNUM
        )
        if type_ is not None and not glued:
            digest = text[start:end]
            # An all-digit run is a number (an id, a timestamp), not a digest: a real MD5 has
            # no letter with probability (10/16)**32, about 3e-7.
            if not digest.isdigit():
                collector.add(type_, digest.lower(), role)
        start = mask.find(_HEX_32, end)


def _scan_techniques(text: str, role: str | None, collector: Collector) -> None:
    # A bare "T1234" is a product model, a ticket or a tape drive as often as a technique, so it
    # counts only when the text speaks of ATT&CK (a context word or a sub-technique id such as
    # T1059.001, which nothing else looks like). Structured alert.techniques need no context.
    for match in _TECHNIQUE_SIGMA.finditer(text):
        collector.add(ObservableType.ATTACK_TECHNIQUE, f"T{match[1]}{match[2] or ''}", role)
    matches = list(_TECHNIQUE_UPPER.finditer(text)) if "T" in text else []
    if not matches:
        return
    in_context = any(m[2] for m in matches)
    if not in_context:
        lowered = text.lower()
        in_context = any(word in lowered for word in _ATTACK_WORDS)
    for match in matches:
        if match[2] or in_context:
            collector.add(ObservableType.ATTACK_TECHNIQUE, f"T{match[1]}{match[2] or ''}", role)
