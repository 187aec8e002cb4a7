"""Download Cityscapes (login) into the store: the seed's path of the `mllib-getcityscapes` command (mllib/commands/getcityscapes.py).

    python3 datasets/getcityscapes.py --help    # the same as: mllib-getcityscapes --help
"""

import sys

from mllib.commands.getcityscapes import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.getcityscapes import main

if __name__ == "__main__":
    sys.exit(main())
