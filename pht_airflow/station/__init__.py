"""The station side of a hop: configuration, the hop steps and the audit log."""
