"""Who may do what: permissions, roles, API tokens (and later users, approvals, audit)."""
