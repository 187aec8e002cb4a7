"""`python3 -m mllib.storecli`: the documented name of mllib.store.cli (ls / put_dir / get_dir from the shell)."""

import sys

from mllib.store.cli import main

if __name__ == "__main__":
    sys.exit(main())
