"""Cases: incidents, their lifecycle (NIST SP 800-61), timeline and (later) tasks and evidence."""
