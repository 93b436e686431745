"""`ray job submit --working-dir . -- python jobs/features.py [args]`: the same code as `tickray features`."""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("features"))
