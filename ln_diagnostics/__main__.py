"""``python -m ln_diagnostics``: the ``ln-diagnostics`` command line."""

import sys

from ln_diagnostics.cli import main

if __name__ == "__main__":
    sys.exit(main())
