"""Fixtures of the connector tests."""

from tests.cli.conftest import invoke
from tests.connectors.netlab import lab
from tests.connectors.slapd import slapd_fixture

__all__ = ["invoke", "lab", "slapd_fixture"]
