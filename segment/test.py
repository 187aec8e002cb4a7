"""Evaluate a Keras model on a TFRecord training set: the seed's path of the `mllib-segment-test` command (mllib/commands/segment_test.py).

    python3 segment/test.py --help    # the same as: mllib-segment-test --help
"""

import sys

from mllib.commands.segment_test import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.segment_test import main

if __name__ == "__main__":
    sys.exit(main())
