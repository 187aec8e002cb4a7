"""Verify a TFRecord training set against its description: the seed's path of the `mllib-checkrecords` command (mllib/commands/checkrecords.py).

    python3 datasets/checkrecords.py --help    # the same as: mllib-checkrecords --help
"""

import sys

from mllib.commands.checkrecords import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.checkrecords import main

if __name__ == "__main__":
    sys.exit(main())
