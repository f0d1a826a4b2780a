"""Refang and defang: turn ``hxxp://evil[.]com`` into ``http://evil.com`` and back.

Markers undone by :func:`refang`, case-insensitive for the words:

- a dot, colon, ``://`` or at sign in brackets: ``[.]`` ``(.)`` ``{.}`` ``[dot]`` ``(dot)``
  ``[:]`` ``[://]`` ``[@]`` ``[at]`` ``(at)``; nested or mixed brackets (``[(.)]``) and a
  single space inside them (``[ . ]``) too;
- a defanged scheme before a colon: ``hxxp`` ``hxxps`` ``hXXp`` ``fxp`` (the case of each
  letter is kept, ``hXXps`` -> ``hTTps``, so a round trip through :func:`defang` is exact).

Deliberately not undone: a bare ``dot``/``at`` word (prose), ``\\.`` (regular expressions and
Windows paths) and ``[/]``. Every bracket run is consumed whole, so what a replacement leaves
behind can never form a new marker: refang is idempotent, which the tests check by search.
"""

from __future__ import annotations

import re

# One pattern per opening bracket so that each starts with a literal: the regex engine then
# finds candidates with a fast substring search instead of testing every character (about 5x
# faster on ordinary text, where "(" is common and markers are rare). The lookbehinds start a
# match only at the first bracket of a run, so a long run of brackets is scanned once, not
# once per bracket (which would be quadratic on hostile input).
_MARKER_TAIL = r"(?: ?[\[({])*+ ?(?P<mark>\.|(?i:dot)|://|:|@|(?i:at))(?: ?[\])}])++"
_MARKERS = tuple(
    re.compile(re.escape(bracket) + r"(?<![\[({]\S)(?<![\[({] \S)" + _MARKER_TAIL)
    for bracket in "[({"
)
_MARK_TO_TEXT = {".": ".", "dot": ".", ":": ":", "://": "://", "@": "@", "at": "@"}

# Anchored on the colon after a defanged scheme, which the engine finds with a fast search; the
# scheme itself is captured by the lookbehinds (a pattern starting with it would be tried at
# every character of the text).
_DEFANGED_SCHEME = re.compile(
    r":(?:(?<=([hH][xX][xX][pP][sS]):)|(?<=([hH][xX][xX][pP]):)"
    r"|(?<=([fF][xX][pP][sS]):)|(?<=([fF][xX][pP]):))"
)
_SCHEME = re.compile(r"(?<![0-9A-Za-z])(?:[hH][tT][tT]|[fF][tT])[pP][sS]?(?=://)")
_WORD_DOT = re.compile(r"(?<=\w)\.(?=\w)")
_X_TO_T = str.maketrans("xX", "tT")
_T_TO_X = str.maketrans("tT", "xX")


def _unmark(match: re.Match[str]) -> str:
    return _MARK_TO_TEXT[match["mark"].lower()]


def _unscheme(text: str) -> str:
    pieces: list[str] = []
    done = 0
    for match in _DEFANGED_SCHEME.finditer(text):
        start, end = match.span(match.lastindex or 1)
        if start and text[start - 1].isascii() and text[start - 1].isalnum():
            continue  # "shxxp:" is a word, not a scheme
        pieces += (text[done:start], text[start:end].translate(_X_TO_T))
        done = end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _scheme(match: re.Match[str]) -> str:
    return match[0].translate(_T_TO_X)


def refang(text: str) -> str:
    """Undo the usual defanging of indicators (``hxxp``, ``[.]``, ``(dot)``, ``[@]``, ``[:]``)."""
    if "[" in text:
        text = _MARKERS[0].sub(_unmark, text)
    if "(" in text:
        text = _MARKERS[1].sub(_unmark, text)
    if "{" in text:
        text = _MARKERS[2].sub(_unmark, text)
    # After the brackets, so that "hxxp[:]//" has become "hxxp://" and shows its colon.
    if ":" in text and ("x" in text or "X" in text):
        text = _unscheme(text)
    return text


def defang(text: str) -> str:
    """Make indicators unclickable the usual way: ``http://a.b`` -> ``hxxp://a[.]b``.

    Every dot between two word characters becomes ``[.]`` (also in file names and versions:
    a mail client would link ``invoice.zip`` just the same), and ``http``, ``https``, ``ftp``
    before ``://`` become ``hxxp``, ``hxxps``, ``fxp``. ``refang(defang(t)) == t`` for any
    text that holds no defanged indicator already.
    """
    text = _SCHEME.sub(_scheme, text)
    return _WORD_DOT.sub("[.]", text)
