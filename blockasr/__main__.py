"""``python -m blockasr COMMAND ...`` is the ``asr`` command."""

import sys

from blockasr.cli import main

sys.exit(main())
