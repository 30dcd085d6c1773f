"""The command lines: ``raycluster`` (``main``, ``commands``, ``format``) and the entry point a Ray
job runs, ``python -m raycluster.submit`` (``ray_submit``)."""

from raycluster.cli.main import main

__all__ = ["main"]
