"""Signed, single-use, expiring approval links, for approvers away from the console.

A link is made for one approval and one user (``POST /api/approvals/{id}/links``, ``quell
approval link``) and can go out by chat (a ``notify`` instance) or e-mail (a ``mail`` instance).
Its token is ``qa_<link id>.<expiry>.<signature>``: the signature (HMAC-SHA256 under a key
derived from Quell's secret key) is checked before anything is read, so a forged or altered
link costs no lookup. The link's row says whose it is and whether it was used; using it
decides as that user, with the user's role *now* (a user disabled or moved to a role that may
not decide can no longer use it), under every rule of :meth:`WaitService.decide`: a comment,
separation of duties, one decision per person. A link posted to a chat channel (a ``notify``
instance: others read it) decides only together with that user's own sign-in (their session or
token); one mailed to the user's own address, or asked for by the user, decides alone.
Opening a link (GET) shows the approval and decides nothing (mail scanners open links);
deciding is a POST. Only the link's id is stored or audited, never its token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import insert, select, update

from quell.clock import Clock
from quell.engine.waits import Wait, WaitService, person
from quell.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuellError,
    UpstreamUnavailable,
)
from quell.governance.audit import AuditLog
from quell.governance.permissions import Permission
from quell.ids import new_id
from quell.sdk.errors import ActionError, TransientError
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import approval_links, users

PREFIX = "qa_"
DEFAULT_TTL = timedelta(hours=24)
MAX_TTL = timedelta(days=7)


@dataclass(frozen=True)
class Link:
    """A link just made: its token is shown once (and sent), never stored."""

    id: str
    wait_id: str
    user: str
    token: str
    url: str
    expires_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (with the token: for the caller who asked for it only)."""
        return {
            "id": self.id,
            "wait_id": self.wait_id,
            "user": self.user,
            "token": self.token,
            "url": self.url,
            "expires_at": self.expires_at.isoformat(),
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ApprovalLinks:
    """Make, show and use approval links."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        secret_key: SecretValue,
        waits: WaitService,
        *,
        public_url: str,
        permissions_of: Callable[[str], frozenset[Permission]],
        audit: AuditLog | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.waits = waits
        self.public_url = public_url.rstrip("/")
        self.permissions_of = permissions_of
        self.audit = audit or AuditLog(db, clock)
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"quell approval links v1"
        ).derive(secret_key.reveal().encode())

    # -- tokens ---------------------------------------------------------------------------------

    def _sign(self, link_id: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{link_id}.{expires}".encode(), hashlib.sha256).digest()
        return _b64(mac)

    def _read(self, token: str) -> str:
        """The link id of a genuine, unexpired token; NotFound for anything else."""
        gone = NotFound("no such approval link (or it expired)", field="token")
        if not token.startswith(PREFIX) or len(token) > 200:
            raise gone
        link_id, _, rest = token[len(PREFIX) :].partition(".")
        expires_text, _, signature = rest.partition(".")
        if not link_id or not expires_text.isdigit() or not signature:
            raise gone
        expected = self._sign(link_id, int(expires_text))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise gone
        if datetime.fromtimestamp(int(expires_text), UTC) <= self.clock.now():
            raise gone
        return link_id

    # -- making ---------------------------------------------------------------------------------

    def create(
        self,
        wait_id: str,
        user: str,
        *,
        by: str,
        ttl: timedelta | None = None,
        sent_via: str | None = None,
    ) -> Link:
        """A link for ``user`` to decide approval ``wait_id``: refused when that user could
        not decide it (role, separation of duties, already decided)."""
        wait = self.waits.get(wait_id)
        if wait.kind != "approval":
            raise Conflict(f"{wait_id} is a {wait.kind} wait, not an approval")
        if wait.status != "pending":
            raise Conflict(f"{wait_id} was already {wait.status}")
        role = self._decider(wait, user)
        now = self.clock.now()
        lifetime = min(ttl or DEFAULT_TTL, MAX_TTL)
        if lifetime <= timedelta(0):
            raise InvalidInput("a link must live a while", field="ttl")
        expires = now + lifetime
        if wait.expires_at is not None and wait.expires_at < expires:
            expires = wait.expires_at  # a link never outlives its approval
        expires = expires.replace(microsecond=0)
        link_id = new_id("apl")
        stamp = int(expires.timestamp())
        token = f"{PREFIX}{link_id}.{stamp}.{self._sign(link_id, stamp)}"
        with self.db.write() as conn:
            conn.execute(
                insert(approval_links).values(
                    id=link_id, wait_id=wait_id, user_name=user, expires_at=expires,
                    sent_via=sent_via, created_by=by, created_at=now,
                )
            )  # fmt: skip
        self.audit.record(
            by,
            "approval.link_created",
            wait_id,
            {"link": link_id, "user": user, "role": role, "expires_at": expires.isoformat(),
             "sent_via": sent_via},
        )  # fmt: skip
        url = f"{self.public_url}/api/approval-links/{token}"
        return Link(link_id, wait_id, user, token, url, expires)

    def withdraw(self, link: Link, *, by: str, reason: str) -> None:
        """Spend a link nobody received (its sending failed), so that it never decides; the
        audit trail says why."""
        with self.db.write() as conn:
            conn.execute(
                update(approval_links)
                .where(approval_links.c.id == link.id, approval_links.c.used_at.is_(None))
                .values(used_at=self.clock.now())
            )
        self.audit.record(
            by, "approval.link_withdrawn", link.wait_id,
            {"link": link.id, "user": link.user, "reason": reason[:300]},
        )  # fmt: skip

    def _decider(self, wait: Wait, user: str) -> str:
        """The role ``user`` decides ``wait`` with; refused when they may not."""
        with self.db.read() as conn:
            row = conn.execute(
                select(users.c.name, users.c.role, users.c.disabled_at).where(users.c.name == user)
            ).first()
        if row is None:
            raise NotFound(f"no user {user!r}", field="user", value=user)
        if row.disabled_at is not None:
            raise Conflict(f"user {user!r} is disabled")
        if Permission.APPROVALS_DECIDE not in self.permissions_of(row.role):
            raise PermissionDenied(f"role {row.role!r} of {user!r} may not decide approvals")
        allowed = wait.deciders
        if allowed and row.role not in allowed and row.role != "admin":
            raise PermissionDenied(
                f"this approval needs one of the roles {', '.join(allowed)}; {user} is {row.role}"
            )
        if person(user) in {person(name) for name in wait.excluded}:  # links are to approve
            raise PermissionDenied(
                f"{user} started this run or wrote this playbook and cannot decide its approval "
                "(separation of duties)"
            )
        if any(vote["voter"] == person(user) for vote in wait.votes):
            raise Conflict(f"{user} already decided this approval")
        return str(row.role)

    # -- using ----------------------------------------------------------------------------------

    def _row(self, token: str) -> Any:
        link_id = self._read(token)
        with self.db.read() as conn:
            row = conn.execute(select(approval_links).where(approval_links.c.id == link_id)).first()
        if row is None or row.expires_at <= self.clock.now():
            raise NotFound("no such approval link (or it expired)", field="token")
        if row.used_at is not None:
            raise Conflict("this approval link was used already")
        return row

    def show(self, token: str) -> dict[str, Any]:
        """What the link decides, for the person who opened it (nothing is decided)."""
        row = self._row(token)
        wait = self.waits.get(row.wait_id)
        return {
            "approval": {
                "id": wait.id,
                "run_id": wait.run_id,
                "step": wait.step_key,
                "prompt": wait.prompt,
                "status": wait.status,
                "required": wait.required,
                "approvals": [vote["voter"] for vote in wait.votes if vote["approved"]],
                "expires_at": wait.expires_at,
            },
            "user": row.user_name,
            "expires_at": row.expires_at,
            "needs_sign_in": _shared(row.sent_via),
            "decide": 'POST this URL with {"decision": "approve" or "reject", "comment": "why"}',
        }

    def use(
        self, token: str, *, approved: bool, comment: str | None, signed_in: str | None = None
    ) -> Wait:
        """Decide as the link's user; the link is spent with the decision (one transaction).
        ``signed_in``: the user whose own credential came with the request, if any."""
        row = self._row(token)
        if _shared(row.sent_via) and signed_in != row.user_name:
            raise PermissionDenied(
                f"this link was posted to a shared channel: it decides only with {row.user_name}'s "
                "own sign-in (send their session or token as the Authorization header)"
            )
        wait = self.waits.get(row.wait_id)
        role = self._decider(wait, row.user_name)
        return self.waits.decide(
            row.wait_id, row.user_name, role, comment, approved=approved, via="link",
            link_id=row.id,
        )  # fmt: skip


def _shared(sent_via: str | None) -> bool:
    """Whether a link went to a place others read (a chat channel)."""
    return bool(sent_via) and str(sent_via).startswith("notify:")


async def send(
    runner: Any, connector: str, instance: str, link: Link, wait: Wait, *, email: str | None,
    actor: str, links: ApprovalLinks,
) -> None:  # fmt: skip
    """Send ``link`` to its user through a connector instance: ``notify`` (a chat channel:
    the message names the user it is for) or ``mail`` (to the user's e-mail address). The call
    is an action call by hand, so it is audited (without its inputs) and guarded like any.
    A link that could not be sent is withdrawn (``links``): nobody holds it, and it is not left
    looking sent."""
    try:
        await _send(runner, connector, instance, link, wait, email=email, actor=actor)
    except QuellError as exc:
        await asyncio.to_thread(links.withdraw, link, by=actor, reason=exc.message)
        raise


async def _send(
    runner: Any, connector: str, instance: str, link: Link, wait: Wait, *, email: str | None,
    actor: str,
) -> None:  # fmt: skip
    title = f"Approval needed: {wait.step_key}"[:150]
    text = (
        f"{link.user}: run {wait.run_id} waits for your approval.\n{(wait.prompt or '')[:1500]}"
        f"\nNeeds {wait.required} approval(s). This link is yours alone, works once and "
        f"expires {link.expires_at.isoformat()}."
    )
    if connector == "notify":
        inputs: dict[str, Any] = {
            "title": title, "text": text[:3000], "severity": "high", "link": link.url,
            "facts": {"approval": wait.id, "for": link.user},
        }  # fmt: skip
        key = "notify.message"
    elif connector == "mail":
        if not email:
            raise Conflict(f"user {link.user!r} has no e-mail address to send the link to")
        inputs = {"to": [email], "subject": title, "text": f"{text}\n\n{link.url}\n"}
        key = "mail.send"
    else:
        raise InvalidInput(
            f"instance {instance!r} is a {connector} connector; approval links go out through a "
            "notify (chat) or mail instance",
            field="via",
        )
    try:
        await runner.run_once(key, inputs, instance=instance, actor=actor)
    except ActionError as exc:
        said = f"the link for {link.user} was not sent through {instance!r}: {exc.message}"
        if isinstance(exc, TransientError):
            raise UpstreamUnavailable(said) from None
        raise ConfigurationError(said, field="via") from None


__all__ = ["DEFAULT_TTL", "PREFIX", "ApprovalLinks", "Link", "send"]
