"""Convert datasets in the store into a sharded TFRecord training set: the seed's path of the `mllib-cocorecord` command (mllib/commands/cocorecord.py).

    python3 datasets/cocorecord.py --help    # the same as: mllib-cocorecord --help
"""

import sys

from mllib.commands.cocorecord import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.cocorecord import main

if __name__ == "__main__":
    sys.exit(main())
