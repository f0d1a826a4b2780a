"""The connector SDK: the only package a connector imports.

A connector declares its actions with :func:`action` on a :class:`Connector` subclass, takes an
:class:`ActionContext` and typed input, returns typed output, and raises from the
:class:`ActionError` tree. Connectors are found through the ``quell.connectors`` entry-point
group (built-ins register the same way) or the modules named in ``QUELL_PLUGINS``.

Names are loaded on first use (PEP 562), so that a module needing only ``quell.sdk.secret`` or
``quell.sdk.errors`` does not pay for aiohttp and SQLAlchemy, which the actions and the context
bring. ``quell --help`` answers at once because of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_EXPORTS = {
    "ActionContext": "quell.sdk.context",
    "ActionError": "quell.sdk.errors",
    "ActionInput": "quell.sdk.actions",
    "ActionMeta": "quell.sdk.actions",
    "ActionOutput": "quell.sdk.actions",
    "AuthError": "quell.sdk.errors",
    "Connector": "quell.sdk.actions",
    "Enrichment": "quell.sdk.intel",
    "Landed": "quell.sdk.actions",
    "LookupIn": "quell.sdk.intel",
    "LookupOut": "quell.sdk.intel",
    "PermanentError": "quell.sdk.errors",
    "REDACTED": "quell.sdk.secret",
    "RateLimited": "quell.sdk.errors",
    "Reconciliation": "quell.sdk.actions",
    "RiskLevel": "quell.sdk.actions",
    "SecretMissing": "quell.sdk.errors",
    "SecretValue": "quell.sdk.secret",
    "TargetNotFound": "quell.sdk.errors",
    "TransientError": "quell.sdk.errors",
    "action": "quell.sdk.actions",
    "verdict_for_score": "quell.sdk.intel",
}


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quell.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, loaded or not."""
    return sorted(__all__)


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
