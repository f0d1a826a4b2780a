"""Correlation: fingerprints and deduplication, suppression rules, grouping into incidents."""
