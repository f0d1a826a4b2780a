"""Quell's benchmarks: ``python -m bench NAME``. Each prints a table, then one JSON line."""
