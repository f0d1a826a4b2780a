"""Playbooks as data: the YAML language, the IR every playbook compiles to, expressions and
static validation. Nothing here touches the database or the network."""
