"""Personal-data detection and redaction before anything leaves the cluster."""
