"""The connector SDK: the only package a connector imports.

It grows with the connector issue; today it holds the secret type every part of Quell shares.
"""

from quell.sdk.secret import REDACTED, SecretValue

__all__ = ["REDACTED", "SecretValue"]
