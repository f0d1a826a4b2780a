"""The connector SDK: the only package a connector imports.

A connector declares its actions with :func:`action` on a :class:`Connector` subclass, takes an
:class:`ActionContext` and typed input, returns typed output, and raises from the
:class:`ActionError` tree. Connectors are found through the ``quell.connectors`` entry-point
group (built-ins register the same way) or the modules named in ``QUELL_PLUGINS``.
"""

from quell.sdk.actions import (
    ActionInput,
    ActionMeta,
    ActionOutput,
    Connector,
    Landed,
    Reconciliation,
    RiskLevel,
    action,
)
from quell.sdk.context import ActionContext
from quell.sdk.errors import (
    ActionError,
    AuthError,
    PermanentError,
    RateLimited,
    SecretMissing,
    TargetNotFound,
    TransientError,
)
from quell.sdk.intel import Enrichment, LookupIn, LookupOut, verdict_for_score
from quell.sdk.secret import REDACTED, SecretValue

__all__ = [
    "REDACTED",
    "ActionContext",
    "ActionError",
    "ActionInput",
    "ActionMeta",
    "ActionOutput",
    "AuthError",
    "Connector",
    "Enrichment",
    "Landed",
    "LookupIn",
    "LookupOut",
    "PermanentError",
    "RateLimited",
    "Reconciliation",
    "RiskLevel",
    "SecretMissing",
    "SecretValue",
    "TargetNotFound",
    "TransientError",
    "action",
    "verdict_for_score",
]
