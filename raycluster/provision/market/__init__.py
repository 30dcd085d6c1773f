"""GPU markets: the interface (base.py) and its implementations."""
