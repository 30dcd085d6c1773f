"""``python -m raycluster.submit SPEC [--follow]``: the entry point a Ray job runs
(``ray job submit --working-dir . -- python -m raycluster.submit configs/jobs/cnn.yaml --follow``).
The code is ``raycluster/cli/ray_submit.py``; this module only keeps the documented command."""

import sys

from raycluster.cli.ray_submit import main

if __name__ == "__main__":
    sys.exit(main())
