"""Example training jobs run by raycluster (entrypoints ``jobs.<name>:train``).

Owns: the three reference workloads (``jobs.cnn``, ``jobs.transformer``, ``jobs.lstm``) and the
shared, deterministic, resumable training loop in ``jobs.common``. All data is synthetic and
generated from the job's seed; nothing is downloaded.
"""
