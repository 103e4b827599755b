"""``python -m loomx``: the ``loomx`` command."""

import sys

from loomx.cli.commands import main

sys.exit(main())
