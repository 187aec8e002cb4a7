"""Train a Keras UNet from a TFRecord training set: the seed's path of the `mllib-segment-train` command (mllib/commands/segment_train.py).

    python3 segment/train.py --help    # the same as: mllib-segment-train --help
"""

import sys

from mllib.commands.segment_train import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.segment_train import main

if __name__ == "__main__":
    sys.exit(main())
