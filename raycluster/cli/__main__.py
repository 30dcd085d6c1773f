"""``python -m raycluster.cli``: the same as the ``raycluster`` command."""

import sys

from raycluster.cli.main import main

sys.exit(main())
