"""The HTTP API: a thin edge over the services."""

from quell.api.app import create_app

__all__ = ["create_app"]
