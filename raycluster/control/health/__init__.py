"""Node health: the HealthMonitor actor on every node (``monitor.py``: psutil + NVML samples,
heartbeats) and the Coordinator's side (``registry.py``: verdicts from ``policy.health``, drain state
in SQLite, auto-heal: unhealthy or drained nodes get no new gangs and their gangs move)."""
