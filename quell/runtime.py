"""The runtime: what a process (server, worker, CLI command) holds once it has started.

It is built explicitly from settings and passed down; nothing here is global. Opening it makes
sure the data directory and secret key exist, connects the database and brings its schema to
this version (or refuses to run against another one). Services are built on first use, and
their modules imported then too: a command that only manages tokens never loads the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Self

from quell.clock import SYSTEM_CLOCK, Clock
from quell.datadir import ensure_data_dir, load_or_create_secret_key
from quell.governance.tokens import TokenService
from quell.sdk.secret import SecretValue
from quell.settings import Settings
from quell.store import migrate
from quell.store.database import Database

if TYPE_CHECKING:
    from quell.cases.cases import CaseService
    from quell.cases.evidence import EvidenceService
    from quell.cases.incidents import IncidentService
    from quell.cases.search import IncidentSearch
    from quell.cases.sla import SlaService
    from quell.connectors.instances import InstanceService
    from quell.connectors.registry import Registry
    from quell.correlate.suppression import SuppressionService
    from quell.engine.actions import ActionRunner
    from quell.engine.containment import ContainmentService
    from quell.engine.guardrails import GuardrailService
    from quell.engine.store import PlaybookStore
    from quell.engine.waits import WaitService
    from quell.governance.approval_links import ApprovalLinks
    from quell.governance.approvals import ApprovalRuleService
    from quell.governance.audit import AuditLog
    from quell.governance.oidc import OidcService
    from quell.governance.permissions import Permission
    from quell.governance.roles import RoleBook
    from quell.governance.secrets import SecretBox
    from quell.governance.users import UserService
    from quell.ingest.alerts import AlertService
    from quell.ingest.checkpoints import DbCheckpointStore
    from quell.ingest.deadletters import DeadLetterService
    from quell.ingest.pipeline import IngestPipeline
    from quell.ingest.sources import SourceService
    from quell.intel.enrich import Enricher, TlpGate
    from quell.intel.store import IntelStore


@dataclass
class Runtime:
    """Settings, clock, secret key, database and the services built on them."""

    settings: Settings
    db: Database
    secret_key: SecretValue
    clock: Clock = field(default=SYSTEM_CLOCK)

    @classmethod
    def open(
        cls, settings: Settings, *, clock: Clock = SYSTEM_CLOCK, migrate_schema: bool = True
    ) -> Runtime:
        """Prepare the data dir and key, connect, and check (or upgrade) the schema."""
        ensure_data_dir(settings.data_dir)
        secret_key = load_or_create_secret_key(settings.data_dir, settings.secret_key)
        db = Database(
            settings.resolved_database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_size=settings.database_pool_size,
        )
        try:
            if migrate_schema:
                migrate.ensure_schema(db, auto_migrate=settings.auto_migrate)
        except BaseException:
            db.dispose()
            raise
        return cls(settings=settings, db=db, secret_key=secret_key, clock=clock)

    @cached_property
    def tokens(self) -> TokenService:
        """API tokens."""
        return TokenService(self.db, self.clock, roles=self.roles)

    @cached_property
    def users(self) -> UserService:
        """Local users, their logins and sessions."""
        from quell.governance.users import UserService

        return UserService(
            self.db,
            self.clock,
            self.audit,
            session_lifetime=timedelta(hours=self.settings.session_hours),
            roles=self.roles,
        )

    @cached_property
    def oidc(self) -> OidcService:
        """Sign-in through the configured OpenID Connect providers."""
        from quell.governance.oidc import OidcService

        return OidcService(
            self.db,
            self.clock,
            users=self.users,
            audit=self.audit,
            secret_box=self.secret_box,
            providers=self.settings.oidc_providers,
            public_url=self.settings.public_url,
        )

    def preflight(self) -> None:
        """What a server or a worker checks before it says it is up: its plugins import and
        its secret key opens what the database holds (ConfigurationError, one line)."""
        _ = self.registry
        self.secret_box.check_key()

    @cached_property
    def secret_box(self) -> SecretBox:
        """Seals secrets at rest under the data keys (wrapped by the secret key)."""
        from quell.governance.keyring import KeyRing
        from quell.governance.secrets import SecretBox

        return SecretBox(self.secret_key, KeyRing(self.secret_key, self.db, self.clock))

    @cached_property
    def sources(self) -> SourceService:
        """Configured alert sources."""
        from quell.ingest.sources import SourceService

        return SourceService(self.db, self.clock, self.secret_box)

    @cached_property
    def pipeline(self) -> IngestPipeline:
        """Records to alerts and incidents, synchronously."""
        from quell.ingest.pipeline import IngestPipeline

        return IngestPipeline(self.db, self.clock, self.sources)

    @cached_property
    def alerts(self) -> AlertService:
        """Stored alerts."""
        from quell.ingest.alerts import AlertService

        return AlertService(self.db)

    @cached_property
    def incidents(self) -> IncidentService:
        """Incidents."""
        from quell.cases.incidents import IncidentService

        return IncidentService(self.db)

    @cached_property
    def dead_letters(self) -> DeadLetterService:
        """Records that could not become alerts."""
        from quell.ingest.deadletters import DeadLetterService

        return DeadLetterService(self.db)

    @cached_property
    def suppressions(self) -> SuppressionService:
        """Suppression rules."""
        from quell.correlate.suppression import SuppressionService

        return SuppressionService(self.db, self.clock)

    @cached_property
    def checkpoints(self) -> DbCheckpointStore:
        """Cursors of pulling sources."""
        from quell.ingest.checkpoints import DbCheckpointStore

        return DbCheckpointStore(self.db, self.clock)

    @cached_property
    def playbooks(self) -> PlaybookStore:
        """Stored playbook versions."""
        from quell.engine.store import PlaybookStore

        return PlaybookStore(self.db, self.clock)

    @cached_property
    def registry(self) -> Registry:
        """Every connector and action found (entry points and ``QUELL_PLUGINS``)."""
        from quell.connectors.registry import Registry

        return Registry.discover(self.settings.plugins)

    @cached_property
    def connector_instances(self) -> InstanceService:
        """Configured connector instances, their secrets sealed."""
        from quell.connectors.instances import InstanceService

        return InstanceService(
            self.db, self.clock, self.secret_box, self.registry, audit=self.audit
        )

    @cached_property
    def audit(self) -> AuditLog:
        """The hash-chained audit trail."""
        from quell.governance.audit import AuditLog

        return AuditLog(self.db, self.clock)

    @cached_property
    def guardrails(self) -> GuardrailService:
        """The guardrail policy: kill switch, hourly limits, protected assets, breaker."""
        from quell.engine.guardrails import GuardrailService

        return GuardrailService(self.db, self.clock, audit=self.audit)

    @cached_property
    def approval_rules(self) -> ApprovalRuleService:
        """The approval policy: which writes need whose approval."""
        from quell.governance.approvals import ApprovalRuleService
        from quell.governance.permissions import Permission

        return ApprovalRuleService(
            self.db,
            self.clock,
            audit=self.audit,
            known_roles=self.role_names,
            deciders=lambda: [
                name
                for name in self.role_names()
                if Permission.APPROVALS_DECIDE in self.permissions_of(name)
            ],
        )

    @cached_property
    def roles(self) -> RoleBook:
        """Built-in and custom roles."""
        from quell.governance.roles import RoleBook

        return RoleBook(self.db, self.clock, audit=self.audit)

    def role_names(self) -> list[str]:
        """Every role a user can hold."""
        return self.roles.names()

    def permissions_of(self, role: str) -> frozenset[Permission]:
        """What a role (built-in or custom) may do; nothing for an unknown one."""
        return self.roles.permissions(role) or frozenset()

    def waits(self, on_change: Callable[[], None] | None = None) -> WaitService:
        """Approvals, tasks and callbacks (decisions audited)."""
        from quell.engine.execution import callback_secret
        from quell.engine.waits import WaitService

        secret = callback_secret(self.secret_key.reveal().encode())
        return WaitService(
            self.db, self.clock, on_change=on_change, callback_secret=secret, audit=self.audit
        )

    def approval_links(self, waits: WaitService | None = None) -> ApprovalLinks:
        """Signed approval links."""
        from quell.governance.approval_links import ApprovalLinks

        return ApprovalLinks(
            self.db, self.clock, self.secret_key, waits or self.waits(),
            public_url=self.settings.public_url, permissions_of=self.permissions_of,
            audit=self.audit,
        )  # fmt: skip

    def action_runner(self, owner: str) -> ActionRunner:
        """An action runner as the engine has one (instances, limits, SSRF guard), for calls
        made by hand; close it with ``await runner.aclose()``."""
        from quell.engine.actions import ActionRunner, EnvSecrets
        from quell.engine.limits import SharedLimits
        from quell.sdk.http import OutboundPolicy

        return ActionRunner(
            self.registry,
            secrets=EnvSecrets(),
            outbound=OutboundPolicy.parse(self.settings.outbound_allow),
            limits=SharedLimits(self.db, self.clock, owner),
            instances=self.connector_instances,
            containments=self.containments,
            audit=self.audit,
            data_policy=self.data_policy,
        )

    @cached_property
    def cases(self) -> CaseService:
        """Working incidents: status, assignment, notes, tasks (audited, on the timeline)."""
        from quell.cases.cases import CaseService

        return CaseService(self.db, self.clock, audit=self.audit)

    @cached_property
    def sla(self) -> SlaService:
        """SLA policy per severity and the incidents' clocks (quell.cases.sla)."""
        from quell.cases.sla import SlaService

        return SlaService(self.db, self.clock, audit=self.audit)

    @cached_property
    def incident_search(self) -> IncidentSearch:
        """Full-text search over incidents."""
        from quell.cases.search import IncidentSearch

        return IncidentSearch(self.db)

    @cached_property
    def intel(self) -> IntelStore:
        """The indicator store and the allow-list."""
        from quell.intel.store import IntelStore

        return IntelStore(self.db, self.clock)

    @cached_property
    def enricher(self) -> Enricher:
        """Verdicts on observables: the store, the allow-list and outside services."""
        from quell.intel.enrich import Enricher

        return Enricher(self)

    @cached_property
    def data_policy(self) -> TlpGate:
        """What may leave through an action: TLP-marked values never reach a service whose
        ceiling they reach (every runner, the engine's and those of calls by hand)."""
        from quell.intel.enrich import TlpGate

        return TlpGate(self.intel)

    @cached_property
    def containments(self) -> ContainmentService:
        """What runs and people contained, and reverting it."""
        from quell.engine.containment import ContainmentService

        return ContainmentService(self.db, self.clock, audit=self.audit)

    @cached_property
    def evidence(self) -> EvidenceService:
        """Evidence attached to incidents: SHA-256-addressed blobs with a chain of custody."""
        from quell.cases.evidence import EvidenceService

        return EvidenceService(
            self.db,
            self.clock,
            self.settings.data_dir / "evidence",
            self.audit,
            max_bytes=self.settings.evidence_max_bytes,
        )

    def close(self) -> None:
        """Release the database connections."""
        self.db.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
