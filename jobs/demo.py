"""`ray job submit --working-dir . -- python jobs/demo.py [args]`: the same code as `tickray demo`."""

import sys

from tickray.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
