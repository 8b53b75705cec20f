"""`python -m catlab.cli ...` (what `accelerate launch -m catlab.cli train ...` runs): the `catlab` command."""

import sys

from catlab.cli import main

if __name__ == "__main__":  # importing this module (pkgutil.walk_packages does) runs nothing
    sys.exit(main())
