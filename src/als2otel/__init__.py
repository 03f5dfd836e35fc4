"""als2otel: Envoy access logs in, the service mesh's topology and golden signals out as OpenTelemetry."""

__version__ = "0.1.0"

__all__ = ["__version__"]
