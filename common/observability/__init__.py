"""Metrics (Prometheus), tracing (OpenTelemetry)."""
