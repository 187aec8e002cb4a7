"""Download COCO 2017, verified and resumable, into the store: the seed's path of the `mllib-getcoco` command (mllib/commands/getcoco.py).

    python3 datasets/getcoco.py --help    # the same as: mllib-getcoco --help
"""

import sys

from mllib.commands.getcoco import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.getcoco import main

if __name__ == "__main__":
    sys.exit(main())
