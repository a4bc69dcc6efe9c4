"""The central service: station directory, router, registry admin (Harbor and plain registry)."""
