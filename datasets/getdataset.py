"""Download a public segmentation dataset (ADE20K, VOC + SBD, COCO-Stuff, ...) into the store: the seed's path of the `mllib-getdataset` command (mllib/commands/getdataset.py).

    python3 datasets/getdataset.py --help    # the same as: mllib-getdataset --help
"""

import sys

from mllib.commands.getdataset import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.getdataset import main

if __name__ == "__main__":
    sys.exit(main())
