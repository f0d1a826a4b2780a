"""The public-suffix list, read once from the copy bundled inside ``publicsuffixlist``.

``PublicSuffixList()`` without a source parses the ``public_suffix_list.dat`` shipped in the
wheel: it never touches the network and never writes a file (only the package's separate
``publicsuffixlist.update`` script downloads, and nothing here imports it). Loading takes about
0.1 s, so it happens on first use rather than at import, and every lookup is cached: the same
few thousand hosts recur across an alert stream.
"""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

from publicsuffixlist import PSLFILE, PublicSuffixList

# Bounds for the lookup caches: big enough for a day's working set of hosts, small enough
# (a few MB) that a stream of random names from hostile text cannot grow memory.
_CACHE_SIZE = 16384


@cache
def _psl() -> PublicSuffixList:
    # accept_unknown=False: a name under a TLD the list does not know has no registered domain.
    return PublicSuffixList(accept_unknown=False)


@cache
def tlds() -> frozenset[str]:
    """Every top-level label the bundled list knows, lowercase, Unicode and punycode forms."""
    found: set[str] = set()
    with Path(PSLFILE).open(encoding="utf-8") as lines:
        for line in lines:
            rule = line.split(" ", 1)[0].strip()
            if not rule or rule.startswith("//"):
                continue
            label = rule.rsplit(".", 1)[-1].lower()
            found.add(label)
            if not label.isascii():
                try:
                    found.add(label.encode("idna").decode("ascii"))
                except UnicodeError:
                    continue
    return frozenset(found)


@lru_cache(maxsize=_CACHE_SIZE)
def registered_domain(host: str) -> str | None:
    """The registrable domain of a lowercase host (``a.b.example.co.uk`` -> ``example.co.uk``).

    The list's private section counts, so ``foo.github.io`` is its own registered domain: the
    owner of a name is what an analyst pivots and blocks on, not the hosting provider.
    """
    return _psl().privatesuffix(host)


@lru_cache(maxsize=_CACHE_SIZE)
def public_suffix_labels(host: str) -> int:
    """How many labels of a lowercase host form its public suffix (0 when unknown)."""
    suffix = _psl().publicsuffix(host)
    return 0 if suffix is None else suffix.count(".") + 1
