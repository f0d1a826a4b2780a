"""The durable engine: runs of compiled playbooks, journaled step by step in the database."""
