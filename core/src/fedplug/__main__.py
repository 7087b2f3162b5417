"""``python -m fedplug``: the ``fedplug`` command (node processes are started this way)."""

import sys

from fedplug.cli import main

if __name__ == "__main__":
    sys.exit(main())
