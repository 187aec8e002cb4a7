"""Train a segmentation network from the store: the seed's path of the `mllib-train` command (mllib/commands/train.py).

    python3 networks/network2d.py --help    # the same as: mllib-train --help
"""

import sys

from mllib.commands.train import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
