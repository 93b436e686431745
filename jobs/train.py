"""`ray job submit --working-dir . -- python jobs/train.py [args]`: the same code as `tickray train`."""

import sys

from tickray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
