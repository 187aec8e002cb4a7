"""Evaluate a trained model (mIoU comparable with papers): the seed's path of the `mllib-evaluate` command (mllib/commands/evaluate.py).

    python3 networks/evaluate.py --help    # the same as: mllib-evaluate --help
"""

import sys

from mllib.commands.evaluate import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
