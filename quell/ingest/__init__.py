"""Ingestion: sources, parsers, normalization to the alert model, observables, dead letters."""
