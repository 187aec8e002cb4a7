"""Export a trained model to ONNX: the seed's path of the `mllib-export` command (mllib/commands/export.py).

    python3 networks/export.py --help    # the same as: mllib-export --help
"""

import sys

from mllib.commands.export import *  # noqa: F403 - the command's names, as this script had them
from mllib.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
