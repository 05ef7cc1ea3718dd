"""Python clients for reversehub (filled in by the clients work)."""
