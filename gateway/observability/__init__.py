"""What the gateway observes: logs, the per-request record, metrics and traces."""

# prometheus-client's own variable: where every worker process writes its samples. Here,
# not in `metrics`, so that the CLI can set it before prometheus-client is first imported
# (it picks its value store at import), and so that only the CLI and the app's factory,
# which read the environment, name it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
