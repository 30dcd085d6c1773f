"""Pure decisions: admission, recovery and the per-job lifecycle steps. No Ray imports here —
a simulator can import ``policy`` and ``store`` alone and replay decisions in simulated time."""
