"""Check a dataset's labels against its class dictionary: the seed's path of the `mllib-checkdataset` command (mllib/commands/checkdataset.py).

    python3 datasets/checkdataset.py --help    # the same as: mllib-checkdataset --help
"""

import sys

from mllib.commands.checkdataset import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.checkdataset import main

if __name__ == "__main__":
    sys.exit(main())
