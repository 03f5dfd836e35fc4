"""A mesh of real Envoys on loopback addresses, for `als2otel demo` and the end-to-end tests."""
