"""raycluster: run many ML training jobs at once on a Ray cluster of GPUs it rents and releases."""

__version__ = "0.1.0"
