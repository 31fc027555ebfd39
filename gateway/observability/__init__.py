"""What the gateway observes: logs, the per-request record, metrics and traces."""
