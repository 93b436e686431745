"""`ray job submit --working-dir . -- python jobs/features.py [args]`: the same code as `tickray features`."""

import sys

from tickray.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
