"""Built-in connectors, and the registry that finds every connector (built-in or not)."""
