"""Quell: open-source incident response orchestration.

Alerts come in through ``quell.ingest``, become incidents in ``quell.cases``, and playbooks
(``quell.playbooks``) run durably on ``quell.engine`` through connectors (``quell.sdk``).
The edges (``quell.api``, ``quell.cli``) are thin layers over those services.
"""

__version__ = "0.1.0"
