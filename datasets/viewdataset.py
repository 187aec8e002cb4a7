"""Pictures of a dataset's images and labels: the seed's path of the `mllib-viewdataset` command (mllib/commands/viewdataset.py).

    python3 datasets/viewdataset.py --help    # the same as: mllib-viewdataset --help
"""

import sys

from mllib.commands.viewdataset import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.viewdataset import main

if __name__ == "__main__":
    sys.exit(main())
