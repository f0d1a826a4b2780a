"""Fixtures of the intel tests: a real TAXII 2.1 server (medallion), tests/intel/taxii_server.py.

Imported rather than named in ``pytest_plugins``: pytest refuses that variable in a conftest
below the top one when the whole suite is collected. Importing the module also registers its
``medallion`` requirement.
"""

from __future__ import annotations

from tests.intel.taxii_server import taxii_collection, taxii_server

__all__ = ["taxii_collection", "taxii_server"]
