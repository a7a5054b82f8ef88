"""What the gateway records: Prometheus metrics, the audit line, and the record step
that writes both for each request."""
