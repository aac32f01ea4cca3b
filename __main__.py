"""``python -m dawnpipe``: the same CLI as the ``dawnpipe`` command."""

import sys

from dawnpipe.cli import main

if __name__ == "__main__":
    sys.exit(main())
