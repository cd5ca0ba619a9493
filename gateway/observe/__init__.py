"""What the gateway tells its operators: Prometheus metrics and the access log."""
