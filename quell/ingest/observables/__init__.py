"""Observable extraction: typed indicators from alert fields and free text.

Public surface: :func:`refang`, :func:`defang`, :func:`classify_ip`, :func:`extract_text`,
:func:`observables_of`, and the bounds :data:`MAX_TEXT_CHARS`, :data:`MAX_OBSERVABLES`,
:data:`MAX_URL_CHARS`.

Libraries. IPs go through stdlib :mod:`ipaddress` (validation, canonical text, ``is_global``).
Domains are checked against the public-suffix list bundled in the ``publicsuffixlist`` wheel,
read from disk on first use, never downloaded (see ``_psl``). For refanging and extraction,
``iocextract`` 1.16.1 and ``ioc-fanger`` 5.1.1 were evaluated and rejected. On 1 KiB of alert
text ioc-fanger's ``fang`` alone took ~870 µs and iocextract's ``extract_iocs`` ~17 ms, where
the whole extraction here takes ~50 µs on the same text and machine. ioc-fanger also rewrites
prose (``did at)`` -> ``did@``, ``a^b`` -> ``a.``); iocextract imports ``requests`` at import
time (undeclared), has no domain extraction and read ``Contact soc@x.org`` as
``contactsoc@x.org``. The scanners here are precompiled regular expressions anchored on
literals, with possessive quantifiers so that no input makes them quadratic (see ``_text``).

False-positive decisions, each pinned by a test:

- **Domains** need a TLD of the bundled list, so ``invoice.pdf``, ``setup.exe``, ``a.b.c``
  and version strings (``1.2.3``, ``v2.0.1``) never count. Under a TLD that is also a common
  file extension (``zip mov py sh so java cab one md``) a two-label name is a file
  (``invoice.zip``, ``setup.py``) and three labels or more a domain (``cdn.evil.zip``); under
  TLDs that are mostly field or member names in alert text (``name id data email shell
  stream app link`` …: ``user.name``, ``host.id``, ``WScript.Shell``) a name counts only
  below a two-label public suffix (``kemkes.go.id``). A capitalised last label (``System.Net``,
  ``Microsoft.Windows``) is code. All these rules apply to free text only: a URL's host or an
  e-mail's domain is a host whatever its TLD. Non-ASCII names are found in URLs only, and
  stored in punycode.
- **E-mail addresses** in text are not also counted as domains (every signature would add
  its company's domain); the structured sender, reply-to and return-path do add their domain,
  which is what an analyst pivots on for a phish.
- **URLs** (``http``, ``https``, ``ftp``) lose trailing sentence punctuation and unbalanced
  closing brackets. A URL's host is added as an observable: an IP host as that IP (intel and
  blocking work on it), a name as its domain and its registered domain. Path and query are
  scanned like any text, so ``?u=other.example.com`` is found, but ``/files/setup.zip`` is a file.
- **IPv4** must not be glued to a word or a longer dotted run (``1.2.3.4.5``, OIDs), must
  have no leading zeros, and is skipped after ``version``, ``build``, ``fw`` and the like.
  The unspecified address (``0.0.0.0``, ``::``) is not an observable. **IPv6** is whatever
  :mod:`ipaddress` accepts among colon runs with ``::`` or 6+ colons (so never a time or a
  MAC address), except runs of two-digit groups (certificate serials and fingerprints); zone
  ids are dropped, IPv4-mapped addresses become IPv4.
- **Hashes** are hex runs with no letter or digit on either side and an exact length of 32,
  40 or 64, so no part of a longer run is ever reported; all-digit runs are numbers.
- **CVE** ids are normalized upper-case. **ATT&CK** ids (T1001-T1699, T0800-T0899 for ICS)
  count in text when written as a sub-technique (``T1059.001``), as a Sigma tag
  (``attack.t1059``), or when the text mentions ATT&CK, MITRE, attack, technique or tactic;
  a bare ``T1000`` elsewhere is a product name. Lower-case ``t1059`` outside a tag is not
  taken. The structured ``alert.techniques`` need no context; tactics (``TA0001``) are not
  techniques and are dropped.

Bounds: :data:`MAX_TEXT_CHARS` (64 Ki characters) of each text field are scanned, cut back to
whitespace; :data:`MAX_OBSERVABLES` (256) per alert or per call, structured ones first; list
fields are read only up to that many entries; URLs are cut at :data:`MAX_URL_CHARS`.
"""

from __future__ import annotations

from quell.ingest.model import Observable
from quell.ingest.observables._alert import observables_of
from quell.ingest.observables._fang import defang, refang
from quell.ingest.observables._ip import classify_ip
from quell.ingest.observables._text import MAX_TEXT_CHARS, bounded, scan
from quell.ingest.observables._values import MAX_OBSERVABLES, MAX_URL_CHARS, Collector

__all__ = [
    "MAX_OBSERVABLES",
    "MAX_TEXT_CHARS",
    "MAX_URL_CHARS",
    "classify_ip",
    "defang",
    "extract_text",
    "observables_of",
    "refang",
]


def extract_text(
    text: str, role: str | None = "text", *, limit: int = MAX_OBSERVABLES
) -> list[Observable]:
    """The indicators in free text: IPs, domains, URLs, e-mails, hashes, CVE and ATT&CK ids.

    Defanged indicators are refanged first. Values are de-duplicated and normalized (see the
    module docstring for what counts and what does not); every one gets ``role``. Only the
    first :data:`MAX_TEXT_CHARS` characters are scanned and at most ``limit`` observables
    returned.
    """
    if not text:
        return []
    found = Collector(limit)
    scan(bounded(text), role, found)
    return list(found.found.values())
