"""mllib: public segmentation datasets into an object store, and from the store into training.

Modules:
  store      one object-store API over S3 (boto3) and local directories
  classes    class dictionaries (mllib/datasets/*.json): id -> trainId lookup, names, colors
  cli        flags and error handling shared by the scripts under datasets/, networks/ and segment/
"""

__version__ = "0.1.0"


class MllibError(Exception):
    """An error a user can act on: scripts print its message on one line and exit non-zero."""
