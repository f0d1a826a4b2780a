"""OASIS CACAO 2.0 playbooks: validation, import into the IR, export from it, and signatures."""
