"""Verdicts: what the store, the allow-list and outside services say of an observable, summed
up as info / safe / suspicious / malicious with a score and every reason.

Rules, in order:

1. An allow-list match is **safe**, score 0, and settles it: nothing else is consulted (this
   is how false positives are cut, and no lookup quota is spent on a known-good value).
2. Each source gives its own verdict and score: an indicator by its confidence (70 or more
   malicious, 20 to 69 suspicious, below 20 info; no confidence counts as 50), an outside
   service by its own rule (see its connector).
3. The verdict is the worst any source gives, the score the highest. A source that says
   *safe* (GreyNoise's known-benign services, say) never outweighs one that says malicious.
4. Nothing known: **info**, score 0.

An alert's verdict is its worst observable's; an incident's is its worst alert's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from quell.intel.model import Tlp, Verdict

MALICIOUS_FROM = 70
SUSPICIOUS_FROM = 20
DEFAULT_CONFIDENCE = 50


@dataclass(slots=True, frozen=True)
class Reason:
    """One source's word on an observable.

    ``kind``: ``indicator`` (the store), ``allowlist``, ``lookup`` (an outside service),
    ``withheld`` (not sent to a service: TLP, quota or an error; says nothing of the value)."""

    source: str
    kind: str
    verdict: Verdict
    score: int
    says: str
    at: datetime | None = None
    ref: str | None = None  # the indicator id, allow-list id, or the service's link

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "verdict": self.verdict.label,
            "score": self.score,
            "says": self.says,
            "at": self.at,
            "ref": self.ref,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reason:
        at = data.get("at")
        return cls(
            source=data["source"],
            kind=data["kind"],
            verdict=Verdict.parse(data["verdict"]),
            score=int(data["score"]),
            says=data["says"],
            at=datetime.fromisoformat(at) if isinstance(at, str) else at,
            ref=data.get("ref"),
        )


@dataclass(slots=True)
class ObservableVerdict:
    """The verdict on one observable, with its reasons."""

    type: str
    value: str
    verdict: Verdict = Verdict.INFO
    score: int = 0
    tlp: Tlp = Tlp.CLEAR
    reasons: list[Reason] = field(default_factory=list)

    def add(self, reason: Reason) -> None:
        self.reasons.append(reason)
        if reason.kind == "withheld":
            return
        if self.verdict is Verdict.SAFE and any(r.kind == "allowlist" for r in self.reasons):
            return
        if reason.kind == "allowlist":
            self.verdict, self.score = Verdict.SAFE, 0
            return
        self.verdict = max(self.verdict, reason.verdict)
        self.score = max(self.score, reason.score)

    @property
    def allowlisted(self) -> bool:
        return any(r.kind == "allowlist" for r in self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "value": self.value,
            "verdict": self.verdict.label,
            "score": self.score,
            "tlp": self.tlp.label,
            "reasons": [r.as_dict() for r in self.reasons],
        }


def indicator_verdict(confidence: int | None) -> tuple[Verdict, int]:
    """An indicator match's verdict and score from its confidence."""
    score = DEFAULT_CONFIDENCE if confidence is None else max(0, min(100, confidence))
    if score >= MALICIOUS_FROM:
        return Verdict.MALICIOUS, score
    if score >= SUSPICIOUS_FROM:
        return Verdict.SUSPICIOUS, score
    return Verdict.INFO, score


def indicator_says(type_: str, match: str, value: str, confidence: int | None, tlp: Tlp) -> str:
    """``indicator 198.51.100.0/24 (range), confidence 90, TLP:AMBER``."""
    how = {"cidr": " (range)", "subdomain": " (and subdomains)"}.get(match, "")
    known = "unknown confidence" if confidence is None else f"confidence {confidence}"
    return f"{type_} indicator {value}{how}, {known}, {tlp.label}"


@dataclass(slots=True)
class Summary:
    """The verdict of an alert or incident: its worst observable, and the reasons that made
    it (observables that are merely info are left out)."""

    verdict: Verdict = Verdict.INFO
    score: int = 0
    reasons: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.label, "score": self.score, "reasons": self.reasons}


def summarize(verdicts: Iterable[ObservableVerdict]) -> Summary:
    """Sum up observables' verdicts (an alert's)."""
    summary = Summary()
    for item in verdicts:
        if item.verdict is Verdict.INFO and not item.reasons:
            continue
        summary.verdict = max(summary.verdict, item.verdict)
        summary.score = max(summary.score, item.score)
        for reason in item.reasons:
            summary.reasons.append({"observable": f"{item.type}:{item.value}", **reason.as_dict()})
    return summary
