"""`ray job submit --working-dir . -- python jobs/demo.py [args]`: the same code as `tickray demo`."""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("demo"))
