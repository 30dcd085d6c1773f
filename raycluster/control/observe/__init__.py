"""What operators see and are told: the MetricsCollector actor (``metrics.py``: Prometheus
families on /metrics, file_sd) and notifications (``notify.py``: webhooks for job and node events
through a durable SQLite outbox, Alertmanager- and Slack-shaped)."""
