"""The tables, as SQLAlchemy Core metadata.

Core, not the ORM: the hot paths (journal writes, claims, ingest) use compiled statements and
``executemany``, and the services map rows to their own frozen dataclasses. Every change here
comes with an Alembic migration in ``quell/store/migrations/versions``; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from quell.store.types import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _json() -> JSON:
    """JSON on SQLite, JSONB on PostgreSQL (indexable, compact)."""
    return JSON().with_variant(JSONB(), "postgresql")


api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("hint", String(8), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(64), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("last_used_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
    # A token that belongs to a user: it acts with the user's current role, and is refused
    # while the user is disabled. NULL: a service token with its own role.
    Column("user_id", String(32), ForeignKey("users.id"), nullable=True),
)

# One active token per name; revoked tokens keep their row (and name) for the record.
Index(
    "uq_api_tokens_active_name",
    api_tokens.c.name,
    unique=True,
    sqlite_where=api_tokens.c.revoked_at.is_(None),
    postgresql_where=api_tokens.c.revoked_at.is_(None),
)


# -- users and sessions ------------------------------------------------------------------------

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("display_name", String(128), nullable=True),
    Column("role", String(32), nullable=False),
    Column("password_hash", String(255), nullable=True),  # argon2id; NULL: no password login
    Column("disabled_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("last_login_at", UTCDateTime(), nullable=True),
    Column("email", String(254), nullable=True),  # where approval links are mailed
    # The identity at an OIDC provider this user signs in as (quell.governance.oidc).
    Column("oidc_issuer", String(255), nullable=True),
    Column("oidc_subject", String(255), nullable=True),
    UniqueConstraint("oidc_issuer", "oidc_subject"),
)

# Custom roles: a name and a set of permissions (the built-in ones live in code).
roles = Table(
    "roles",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("description", Text, nullable=True),
    Column("permissions", _json(), nullable=False),
    Column("created_by", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# OIDC logins in flight: the state (only its hash), nonce and sealed PKCE verifier, until the
# provider redirects back or the login expires.
oidc_logins = Table(
    "oidc_logins",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("provider", String(64), nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("code_verifier", LargeBinary, nullable=False),
    Column("redirect_to", String(1024), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# A login session: only the SHA-256 of its ``qs_`` token is kept. ``expires_at`` slides forward
# with use (quell.governance.users).
user_sessions = Table(
    "user_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("client", String(64), nullable=True),
)

# One row per failed login, counted over a window per name and per client address to refuse
# guessing; in the database so the limit holds across server processes. Old rows are pruned.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("name", String(64), nullable=False),
    Column("client", String(64), nullable=True),
    Index("ix_login_failures_name_at", "name", "at"),
    Index("ix_login_failures_client_at", "client", "at"),
)


# -- ingestion ---------------------------------------------------------------------------------

sources = Table(
    "sources",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # http, file, syslog, imap, elastic
    Column("format", String(16), nullable=False),
    Column("parser_options", _json(), nullable=False),
    Column("settings", _json(), nullable=False),  # kind-specific (ports, mailbox, index, ...)
    Column("secret", LargeBinary, nullable=True),  # sealed by quell.governance.secrets
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("received", BigInteger, nullable=False, default=0),
    Column("stored", BigInteger, nullable=False, default=0),
    Column("deduplicated", BigInteger, nullable=False, default=0),
    Column("suppressed", BigInteger, nullable=False, default=0),
    Column("dead_lettered", BigInteger, nullable=False, default=0),
    Column("last_received_at", UTCDateTime(), nullable=True),
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("title", String(512), nullable=False),
    Column("status", String(16), nullable=False),  # new, triage, contained, ... closed
    Column("resolution", String(32), nullable=True),
    Column("severity_id", SmallInteger, nullable=False),
    Column("alert_count", Integer, nullable=False),
    Column("first_seen", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("merged_into", String(32), ForeignKey("incidents.id"), nullable=True),
    # The case: who works it, how urgent, what it is about (correlation fills none of these).
    Column("priority", SmallInteger, nullable=True),  # 1 (most urgent) to 4
    Column("owner", String(128), nullable=True),
    Column("assignee", String(128), nullable=True),
    Column("tags", _json(), nullable=False, server_default=text("'[]'")),
    Column("techniques", _json(), nullable=False, server_default=text("'[]'")),
    Column("description", Text, nullable=True),
    # When each SLA clock stopped: acknowledged (left new), contained, closed.
    Column("acknowledged_at", UTCDateTime(), nullable=True),
    Column("contained_at", UTCDateTime(), nullable=True),
    Column("closed_at", UTCDateTime(), nullable=True),
    Column("closed_by", String(128), nullable=True),
)
Index("ix_incidents_status_last_seen", incidents.c.status, incidents.c.last_seen)
# The SLA check reads the incidents changed since its last look (quell.cases.sla).
Index("ix_incidents_updated_at", incidents.c.updated_at)

# The observables an open incident correlates on, with when each was last seen in it.
incident_keys = Table(
    "incident_keys",
    metadata,
    Column("incident_id", String(32), ForeignKey("incidents.id"), primary_key=True),
    Column("type", String(24), primary_key=True),
    Column("value", String(512), primary_key=True),
    Column("last_seen", UTCDateTime(), nullable=False),
    sqlite_with_rowid=False,
)
Index("ix_incident_keys_lookup", incident_keys.c.type, incident_keys.c.value)

incident_events = Table(
    "incident_events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("incident_id", String(32), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),  # created, merged, merged_into, ...
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(64), nullable=True),
    Column("data", _json(), nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("format", String(16), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("first_seen", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("count", Integer, nullable=False),
    Column("severity_id", SmallInteger, nullable=False),
    Column("title", String(512), nullable=False),
    Column("rule_uid", String(256), nullable=True),
    Column("rule_name", String(512), nullable=True),
    Column("status", String(16), nullable=False),
    Column("incident_id", String(32), ForeignKey("incidents.id"), nullable=True, index=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("data", _json(), nullable=False),  # the alert's content fields (see ingest.alerts)
    Column("raw", LargeBinary, nullable=False),  # the record's bytes, verbatim
)
Index("ix_alerts_fingerprint_last_seen", alerts.c.fingerprint, alerts.c.last_seen)
# No index on received_at: ids are time-ordered at receipt, so "newest first" is the id order.
# A source's alerts, newest first: without it, listing a quiet source (the phishing mailbox
# beside an IDS) walked every alert.
Index("ix_alerts_source_id", alerts.c.source, alerts.c.id)

# Keyed (type, value, alert_id) and WITHOUT ROWID on SQLite: one B-tree per row, ordered the
# way it is searched (which alerts saw this IP?). An alert's own observables are read from its
# document, so no second index by alert is kept. PostgreSQL ignores the SQLite option.
alert_observables = Table(
    "alert_observables",
    metadata,
    Column("type", String(24), primary_key=True),
    Column("value", String(512), primary_key=True),
    Column("alert_id", String(32), ForeignKey("alerts.id"), primary_key=True),
    Column("role", String(16), nullable=True),
    Column("private", Boolean, nullable=True),  # IPs: not globally routable
    sqlite_with_rowid=False,
)

suppression_rules = Table(
    "suppression_rules",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("match", _json(), nullable=False),
    Column("action", String(16), nullable=False),  # drop, close
    Column("builtin", Boolean, nullable=False, default=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("hits", BigInteger, nullable=False, default=0),
    Column("last_hit_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("format", String(16), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
    Column("field", String(256), nullable=True),
    Column("raw", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # pending, replayed
    Column("attempts", Integer, nullable=False, default=1),
    Column("replayed_at", UTCDateTime(), nullable=True),
)
Index("ix_dead_letters_source_status", dead_letters.c.source, dead_letters.c.status)

ingest_checkpoints = Table(
    "ingest_checkpoints",
    metadata,
    Column("key", String(256), primary_key=True),
    Column("cursor", _json(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Signatures already accepted by the HTTP intake, kept for the replay window.
ingest_nonces = Table(
    "ingest_nonces",
    metadata,
    Column("signature", String(128), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)


# -- playbooks and the engine --------------------------------------------------------------------

# Every compiled playbook a run ever pinned: the IR as JSON, and the text it came from.
playbook_versions = Table(
    "playbook_versions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("playbook_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),  # the content: ir.content_digest
    Column("ir", Text, nullable=False),
    Column("source", Text, nullable=True),
    Column("source_format", String(16), nullable=False),
    Column("active", Boolean, nullable=False, default=False),  # its triggers are live
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(64), nullable=True),
    # Publishing (quell.engine.library): draft -> in_review -> published; only a published
    # version becomes active. A version's IR never changes, whatever its state.
    Column("state", String(16), nullable=True),
    Column("published_at", UTCDateTime(), nullable=True),
    Column("published_by", String(64), nullable=True),
)
Index("ix_playbook_versions_playbook_id_version", playbook_versions.c.playbook_id,
      playbook_versions.c.version)  # fmt: skip
Index(
    "uq_playbook_versions_active",
    playbook_versions.c.playbook_id,
    unique=True,
    sqlite_where=playbook_versions.c.active.is_(True),
    postgresql_where=playbook_versions.c.active.is_(True),
)

# Credentials an imported CACAO playbook carried inline (quell.engine.cacao): sealed, named
# "<playbook id>/<authentication info id>"; the stored playbook text only refers to them.
playbook_credentials = Table(
    "playbook_credentials",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("playbook_id", String(128), nullable=False, index=True),
    Column("kind", String(32), nullable=False),  # http-basic, user-auth, oauth2
    Column("secret", LargeBinary, nullable=False),
    # JSON list: the hosts an HTTP call may send it to (those of the target that carried it)
    Column("hosts", Text, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("updated_by", String(64), nullable=True),
)

# Who submitted, published, rejected or rolled back which playbook version, and why.
playbook_reviews = Table(
    "playbook_reviews",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("version_id", String(32), ForeignKey("playbook_versions.id"), nullable=False),
    Column("playbook_id", String(128), nullable=False, index=True),
    Column("action", String(16), nullable=False),
    Column("by", String(64), nullable=False),
    Column("comment", Text, nullable=True),
    Column("at", UTCDateTime(), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("playbook_version_id", String(32), ForeignKey("playbook_versions.id"), nullable=False),
    Column("playbook_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # see quell.engine.states.RunStatus
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("inputs", _json(), nullable=False),
    Column("variables", _json(), nullable=True),  # when it ended
    Column("error", _json(), nullable=True),
    Column("trigger", String(32), nullable=False),  # manual, alert.created, schedule, playbook...
    Column("trigger_ref", String(64), nullable=True),  # the alert, incident, or parent run
    Column("dedupe_key", String(160), nullable=True, unique=True),
    Column("parent_run_id", String(32), nullable=True),
    Column("parent_key", String(512), nullable=True),  # the parent's step that started it
    Column("root_run_id", String(32), nullable=False),
    Column("created_by", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("deadline", UTCDateTime(), nullable=True),
    Column("wake_at", UTCDateTime(), nullable=True),  # waiting: a timer or the deadline
    Column("control", String(16), nullable=True),  # cancel or pause, asked while running
    # The lease: who runs it, until when, and the epoch that fences a worker that lost it.
    Column("owner", String(64), nullable=True),
    Column("lease_epoch", Integer, nullable=False, default=0),
    Column("lease_expires", UTCDateTime(), nullable=True),
)
# Partial indexes: each holds only the runs a worker looks for in that state, so the many
# runs passing through (and the finished ones) cost them nothing.
Index(
    "ix_runs_ready",
    runs.c.created_at,
    sqlite_where=runs.c.status == "ready",
    postgresql_where=runs.c.status == "ready",
)
Index(
    "ix_runs_running_lease",
    runs.c.lease_expires,
    sqlite_where=runs.c.status == "running",
    postgresql_where=runs.c.status == "running",
)
Index(
    "ix_runs_waiting_wake",
    runs.c.wake_at,
    sqlite_where=runs.c.status == "waiting",
    postgresql_where=runs.c.status == "waiting",
)
Index("ix_runs_playbook_id_created_at", runs.c.playbook_id, runs.c.created_at)
# The list of runs, newest first, and the runs an incident's alerts started (its timeline):
# without these, both read every run there ever was. Runs that succeeded are the bulk; the
# runs of every other status keep their own ordered range, so that listing the failed (or
# the few running) ones never walks past all those that succeeded. Only transitions before
# the end, and the end in another status, touch it.
Index("ix_runs_created_at", runs.c.created_at, runs.c.id)
Index("ix_runs_trigger_ref", runs.c.trigger_ref)
Index(
    "ix_runs_not_succeeded",
    runs.c.status,
    runs.c.created_at,
    runs.c.id,
    sqlite_where=runs.c.status != "succeeded",
    postgresql_where=runs.c.status != "succeeded",
)
Index(
    "ix_runs_parent_run_id",
    runs.c.parent_run_id,
    sqlite_where=runs.c.parent_run_id.is_not(None),
    postgresql_where=runs.c.parent_run_id.is_not(None),
)

# The journal: one row per attempt of each step (a step inside a loop or a for_each has one
# per iteration; ``key`` says which: ``poll#2/bump``, ``isolate[3]``).
run_steps = Table(
    "run_steps",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id"), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("seq", Integer, nullable=False),  # the order the run wrote its records in
    Column("step_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(24), nullable=False),  # see quell.engine.states.StepStatus
    Column("action", String(128), nullable=True),
    Column("idempotency_key", String(160), nullable=True),
    Column("inputs", _json(), nullable=True),
    Column("output", _json(), nullable=True),
    Column("error", _json(), nullable=True),
    Column("assigned", _json(), nullable=True),  # playbook variables the step set
    Column("simulated", Boolean, nullable=False, default=False),  # dry-run: not called
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("due_at", UTCDateTime(), nullable=True),  # a timer, a delay or a retry backoff
    sqlite_with_rowid=False,  # one B-tree, in the order records are read (by run)
)

# What waiting runs wait for: a person's decision, a task, a callback, a timer, a child run.
waits = Table(
    "waits",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("run_id", String(32), ForeignKey("runs.id"), nullable=False),
    Column("step_key", String(512), nullable=False),
    Column("kind", String(16), nullable=False),  # approval, task, event, reconcile
    Column("status", String(16), nullable=False),  # pending, approved, rejected, done, ...
    Column("prompt", Text, nullable=True),
    Column("approvers", _json(), nullable=True),  # roles that may decide
    Column("token_hash", String(64), nullable=True, unique=True),  # event callbacks
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("on_expiry", String(16), nullable=True),
    Column("requested_by", String(64), nullable=True),
    Column("decision", _json(), nullable=True),
    Column("decided_by", String(64), nullable=True),
    Column("decided_at", UTCDateTime(), nullable=True),
    Column("comment", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # Approvals under a policy (quell.governance.approvals): how many distinct people must
    # approve, the rule that said so, who may not decide (the requester, the playbook's author),
    # and when the approval escalates to whom.
    Column("required", SmallInteger, nullable=True),
    Column("rule", String(64), nullable=True),
    Column("excluded", _json(), nullable=True),
    Column("escalate_at", UTCDateTime(), nullable=True),
    Column("escalate_to", _json(), nullable=True),
    Column("escalated_at", UTCDateTime(), nullable=True),
)
Index("ix_waits_status_expires_at", waits.c.status, waits.c.expires_at)
# Approvals due to escalate, searched on every tick: pending, not yet escalated, by time. The
# index above would only narrow that to every pending wait.
Index("ix_waits_status_escalation", waits.c.status, waits.c.escalated_at, waits.c.escalate_at)
# A run's waits, and its pending ones (a cancel closes them; the pages list them by run, oldest
# first): with the status in it, SQLite (which has no statistics) prefers it to the status
# indexes, which hold every pending wait of every run; with the age after it, that holds for
# the ordered listing too.
Index(
    "ix_waits_run_id_status_created",
    waits.c.run_id, waits.c.status, waits.c.created_at, waits.c.id,
)  # fmt: skip
# The approvals and tasks pages: pending waits, oldest first, a page at a time, read in order
# instead of sorting every pending wait.
Index("ix_waits_status_created", waits.c.status, waits.c.created_at, waits.c.id)

# Approval policy: the first enabled rule (by position) that matches a write decides how many
# approvals it needs and from which roles.
approval_rules = Table(
    "approval_rules",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("position", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("description", Text, nullable=True),
    Column("match", _json(), nullable=False),
    Column("approvals", SmallInteger, nullable=False),
    Column("roles", _json(), nullable=True),
    Column("expires_after", Integer, nullable=True),  # seconds
    Column("on_expiry", String(16), nullable=True),
    Column("escalate_after", Integer, nullable=True),  # seconds
    Column("escalate_to", _json(), nullable=True),
    Column("created_by", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_by", String(64), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# One person's decision on an approval: one per person (a second is refused).
approval_votes = Table(
    "approval_votes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("wait_id", String(32), ForeignKey("waits.id"), nullable=False),
    Column("voter", String(64), nullable=False),
    Column("role", String(32), nullable=True),
    Column("approved", Boolean, nullable=False),
    Column("comment", Text, nullable=False),
    Column("via", String(16), nullable=False),  # api, cli, link
    Column("at", UTCDateTime(), nullable=False),
    UniqueConstraint("wait_id", "voter"),
)

# Signed approval links: single use (used_at), expiring, addressed to one user.
approval_links = Table(
    "approval_links",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("wait_id", String(32), ForeignKey("waits.id"), nullable=False, index=True),
    Column("user_name", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime(), nullable=True),
    Column("sent_via", String(64), nullable=True),
    Column("created_by", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

# The outbox: events written in the transaction that caused them (an alert stored, an
# incident created), turned into runs by the dispatcher, idempotently.
outbox = Table(
    "outbox",
    metadata,
    Column("id", String(32), primary_key=True),  # time-ordered
    Column("kind", String(32), nullable=False),
    Column("subject_id", String(32), nullable=False),
    Column("payload", _json(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("processed_at", UTCDateTime(), nullable=True),
)
Index("ix_outbox_processed_at_id", outbox.c.processed_at, outbox.c.id)

schedules = Table(
    "schedules",
    metadata,
    Column("playbook_id", String(128), primary_key=True),
    Column("trigger", Integer, primary_key=True),  # its index among the playbook's triggers
    Column("cron", String(128), nullable=False),
    Column("next_at", UTCDateTime(), nullable=False),
    Column("last_at", UTCDateTime(), nullable=True),
)

# Token buckets that limit an action's rate across every worker.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key", String(160), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Slots that cap an action's calls in flight across every worker: a call holds one row
# (``owner``) until it ends or ``expires_at`` passes (its worker died).
action_slots = Table(
    "action_slots",
    metadata,
    Column("key", String(160), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("owner", String(128), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
)

# Configured connector instances: a connector (``nftables``) with its settings under a name
# (``edge-fw``). Settings are validated by the connector's config model and stored in clear;
# secrets are one sealed JSON object (quell.governance.secrets), never shown back.
connector_instances = Table(
    "connector_instances",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("connector", String(64), nullable=False),
    Column("config", _json(), nullable=False),
    Column("secrets", LargeBinary, nullable=True),
    Column("secret_names", _json(), nullable=False),  # which secrets are set (not their values)
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_by", String(128), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Guardrails: policy by name (``kill_switch``, ``limits``, ``protected``, ``breaker``, and
# ``breaker:<playbook id>`` for an open circuit), changed by people and read by every worker.
guardrails = Table(
    "guardrails",
    metadata,
    Column("name", String(160), primary_key=True),
    Column("value", _json(), nullable=False),
    Column("updated_by", String(128), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# One row per automated execution that an hourly limit counts (only actions a limit covers).
guard_events = Table(
    "guard_events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("scope", String(160), nullable=False),  # action:<key> or risk:<level>
    Column("at", UTCDateTime(), nullable=False),
    Column("run_id", String(32), nullable=True),
)

Index("ix_guard_events_scope_at", guard_events.c.scope, guard_events.c.at)

# Containments a run (or a person) put in place and that can be undone: what, where, by whom,
# since and until when, and how to revert it; reverted by a person or, at expiry, by the engine.
containments = Table(
    "containments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("action", String(128), nullable=False),  # the action that contained
    Column("instance", String(64), nullable=True),  # its connector instance ("" unconfigured)
    Column("target", _json(), nullable=False),  # the action's inputs
    Column("output", _json(), nullable=True),  # what the peer answered (a rule number, …)
    Column("revert_action", String(128), nullable=False),
    Column("revert_input", _json(), nullable=True),  # None: a person must revert it
    Column("run_id", String(32), nullable=True),
    Column("step_key", String(512), nullable=True),
    Column("created_by", String(128), nullable=False),  # run:<id> or a person
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("status", String(16), nullable=False),  # active, reverted, failed
    Column("attempts", Integer, nullable=False, default=0),  # reverts tried
    Column("next_attempt_at", UTCDateTime(), nullable=True),  # a failed revert's retry
    Column("claimed_until", UTCDateTime(), nullable=True),  # a revert in progress holds it
    Column("last_error", _json(), nullable=True),
    Column("reverted_at", UTCDateTime(), nullable=True),
    Column("reverted_by", String(128), nullable=True),
)

Index("ix_containments_status_expires", containments.c.status, containments.c.expires_at)
# One containment per step of a run: a step recorded again (a replay, a reconcile) adds none.
Index("uq_containments_run_step", containments.c.run_id, containments.c.step_key, unique=True)

# The audit trail: who did what to which, and why; each event's hash covers the one before it,
# so an edited, removed or reordered event breaks the chain (quell.governance.audit).
audit_events = Table(
    "audit_events",
    metadata,
    Column(
        "seq",
        BigInteger().with_variant(Integer(), "sqlite"),  # SQLite: the rowid, so it counts
        primary_key=True,
        autoincrement=True,
    ),
    Column("id", String(32), nullable=False, unique=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(160), nullable=False),
    Column("action", String(64), nullable=False),  # guardrail.hold, connector.create, ...
    Column("subject", String(512), nullable=True),  # a run, an instance, a containment
    Column("detail", _json(), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("request_id", String(40), nullable=True),  # the API request that caused it
)
# What was done to one run, host, instance or incident, newest first: the question an audit
# asks; without it, answering it read the whole trail.
Index("ix_audit_events_subject_seq", audit_events.c.subject, audit_events.c.seq)

# Events on their way to the chain: a run's action calls are written here in the journal's own
# transactions (no lock on the chain in the hot path) and appended in order by the engine's tick
# (quell.governance.audit.AuditLog.drain).
audit_outbox = Table(
    "audit_outbox",
    metadata,
    Column("id", String(32), primary_key=True),  # time-ordered
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(160), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(512), nullable=True),
    Column("detail", _json(), nullable=False),
)

# The data keys that seal secrets at rest (quell.governance.keyring). A random key is kept
# wrapped (AES-256-GCM) under a key derived from the secret key; the ``derived`` key (the one
# used before any rotation) is computed from the secret key and never stored. One key is
# ``active`` (seals), at most one ``retiring`` (still opens, while a rotation moves values off
# it); a ``retired`` key's material is erased and it opens nothing.
secret_keys = Table(
    "secret_keys",
    metadata,
    Column("id", String(16), primary_key=True),  # the key id every sealed value carries, in hex
    Column("kind", String(16), nullable=False),  # random, derived
    Column("state", String(16), nullable=False),  # active, retiring, retired
    Column("wrapped", LargeBinary, nullable=True),  # NULL: derived, or retired (erased)
    Column("created_at", UTCDateTime(), nullable=False),
    Column("retired_at", UTCDateTime(), nullable=True),
)
# One active key and at most one retiring: two rotations cannot start at once.
Index(
    "uq_secret_keys_live_state",
    secret_keys.c.state,
    unique=True,
    sqlite_where=secret_keys.c.state != "retired",
    postgresql_where=secret_keys.c.state != "retired",
)

# -- threat intelligence -------------------------------------------------------------------------

# One row per indicator a source gave: the same value from two feeds is two rows, so a verdict
# can say which source said what. ``key`` is the match key (quell.intel.model); ``digest``
# hashes the content fields, so a re-import tells unchanged from updated without comparing them.
indicators = Table(
    "indicators",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(128), nullable=False),
    Column("key", String(2100), nullable=False),
    Column("type", String(16), nullable=False),  # ipv4, ipv6, domain, url, md5, sha1, ...
    Column("match", String(16), nullable=False),  # exact, cidr, subdomain
    Column("value", String(2048), nullable=False),  # canonical
    Column("confidence", SmallInteger, nullable=True),  # 0-100
    Column("severity_id", SmallInteger, nullable=True),  # OCSF scale
    Column("tlp", SmallInteger, nullable=False),  # quell.intel.model.Tlp
    Column("first_seen", UTCDateTime(), nullable=True),
    Column("last_seen", UTCDateTime(), nullable=True),
    Column("valid_until", UTCDateTime(), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("tags", _json(), nullable=False),
    Column("kill_chain", _json(), nullable=False),
    Column("stix_ids", _json(), nullable=False),
    Column("description", Text, nullable=True),
    Column("digest", String(32), nullable=False),
    Column("sightings", Integer, nullable=False, default=0),
    Column("last_sighted_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The intel revision of the transaction that last wrote the row (``intel_revision``): the
    # in-memory indexes load what changed by revision, never missing a long import's rows.
    Column("rev", BigInteger, nullable=False),
)
# (key, source): unique per source, and the index every lookup by key uses.
Index("uq_indicators_key_source", indicators.c.key, indicators.c.source, unique=True)
Index("ix_indicators_rev", indicators.c.rev)

# One row: the revision of the last committed change to indicators or the allow-list. A write
# takes the next one first (an UPDATE: writers queue on the row until they commit), so a
# reader that sees revision N has every row of revisions up to N committed.
intel_revision = Table(
    "intel_revision",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("rev", BigInteger, nullable=False),
)

# A sighting: an indicator seen in an alert (or reported seen by the source that gave it).
indicator_sightings = Table(
    "indicator_sightings",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("indicator_id", String(32), ForeignKey("indicators.id"), nullable=False, index=True),
    Column("seen_at", UTCDateTime(), nullable=False),
    Column("alert_id", String(32), nullable=True, index=True),
    Column("observable", String(2048), nullable=False),
    Column("reported_by", String(256), nullable=True),  # who reported an outside sighting
)

# Known-good values: a match makes an observable safe, whatever else says otherwise.
intel_allowlist = Table(
    "intel_allowlist",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("key", String(2100), nullable=False, unique=True),
    Column("type", String(16), nullable=False),
    Column("match", String(16), nullable=False),
    Column("value", String(2048), nullable=False),
    Column("reason", String(512), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Feeds pulled on a schedule (HTTP files, MISP feeds, TAXII collections), with what the last
# pull said: conditional-request validators, TAXII checkpoint, last success and last error.
intel_feeds = Table(
    "intel_feeds",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # url, misp-feed, taxii
    Column("format", String(16), nullable=False),  # stix, misp, csv, ...
    Column("url", String(2048), nullable=False),
    Column("settings", _json(), nullable=False),  # mapping, tlp, confidence, collection, ...
    Column("secret", LargeBinary, nullable=True),  # sealed credentials
    Column("interval_s", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("etag", String(512), nullable=True),
    Column("last_modified", String(64), nullable=True),
    Column("checkpoint", _json(), nullable=True),
    Column("next_pull_at", UTCDateTime(), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("last_attempt_at", UTCDateTime(), nullable=True),
    Column("last_success_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UTCDateTime(), nullable=True),
    Column("last_report", _json(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# External lookups already made, until their source's TTL ends.
intel_cache = Table(
    "intel_cache",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("key", String(2100), primary_key=True),
    Column("answer", _json(), nullable=False),
    Column("fetched_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Calls made to an external source in the current quota window, shared by every worker.
intel_quota = Table(
    "intel_quota",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("window_start", UTCDateTime(), primary_key=True),
    Column("used", Integer, nullable=False),
)

# The verdict of an alert (its worst observable) with its reasons, from enrichment.
alert_verdicts = Table(
    "alert_verdicts",
    metadata,
    Column("alert_id", String(32), ForeignKey("alerts.id"), primary_key=True),
    Column("verdict", SmallInteger, nullable=False),  # quell.intel.model.Verdict
    Column("score", SmallInteger, nullable=False),
    Column("reasons", _json(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# -- cases -----------------------------------------------------------------------------------------

# Notes people write on an incident; never edited, only added.
incident_notes = Table(
    "incident_notes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("incident_id", String(32), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("author", String(128), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Tasks on an incident: ad hoc (a person made it) or a playbook's manual step (run_id and
# step_key set; the run waits until the task is completed).
incident_tasks = Table(
    "incident_tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("incident_id", String(32), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("title", String(512), nullable=False),
    Column("description", Text, nullable=True),
    Column("status", String(16), nullable=False),  # open, done, cancelled
    Column("assignee", String(128), nullable=True),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("due_at", UTCDateTime(), nullable=True),
    Column("completed_by", String(128), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("result", Text, nullable=True),
    Column("run_id", String(32), nullable=True),
    Column("step_key", String(512), nullable=True),
)

# Evidence: content-addressed files (the bytes live once per SHA-256 in the data directory's
# blob store); who added and who read each is the chain of custody.
incident_evidence = Table(
    "incident_evidence",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("incident_id", String(32), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("sha256", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("media_type", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("description", Text, nullable=True),
    Column("added_by", String(128), nullable=False),
    Column("added_at", UTCDateTime(), nullable=False),
)

evidence_custody = Table(
    "evidence_custody",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("evidence_id", String(32), ForeignKey("incident_evidence.id"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),  # added, read, exported, moved
    Column("detail", _json(), nullable=False),
)
Index("ix_evidence_custody_evidence_at", evidence_custody.c.evidence_id, evidence_custody.c.at)

# SLA clocks of an incident: one per metric (acknowledge, contain, close), due by its severity's
# policy; ``met_at`` when it stopped in time, ``breached_at`` when it did not.
incident_slas = Table(
    "incident_slas",
    metadata,
    Column("incident_id", String(32), ForeignKey("incidents.id"), primary_key=True),
    Column("metric", String(16), primary_key=True),  # acknowledge, contain, close
    Column("severity_id", SmallInteger, nullable=False),  # the severity due_at is computed for
    Column("due_at", UTCDateTime(), nullable=False),
    Column("met_at", UTCDateTime(), nullable=True),
    Column("breached_at", UTCDateTime(), nullable=True),
)
Index(
    "ix_incident_slas_due",
    incident_slas.c.breached_at,
    incident_slas.c.met_at,
    incident_slas.c.due_at,
)

# A severity's SLA targets where they differ from the defaults (quell.cases.sla), in seconds;
# NULL: no SLA for that metric.
sla_policies = Table(
    "sla_policies",
    metadata,
    Column("severity_id", SmallInteger, primary_key=True, autoincrement=False),  # OCSF 1..6
    Column("acknowledge_s", Integer, nullable=True),
    Column("contain_s", Integer, nullable=True),
    Column("close_s", Integer, nullable=True),
    Column("updated_by", String(128), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# The text each incident is found by (title, description, tags, notes, tasks, alerts' titles
# and rules, correlation values), rebuilt when the incident changed since ``indexed_at``. Full
# text search runs on the database's own engine: an FTS5 table ``incident_fts`` on SQLite and a
# GIN index over ``to_tsvector('simple', body)`` on PostgreSQL, both made by migration 0011
# (``quell.cases.search``).
incident_documents = Table(
    "incident_documents",
    metadata,
    Column("incident_id", String(32), ForeignKey("incidents.id"), primary_key=True),
    Column("body", Text, nullable=False),
    Column("indexed_at", UTCDateTime(), nullable=False),
)
