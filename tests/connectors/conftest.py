"""Fixtures of the connector tests."""

from tests.cli.conftest import invoke
from tests.connectors.netlab import lab

__all__ = ["invoke", "lab"]
