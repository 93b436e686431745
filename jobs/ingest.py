"""`ray job submit --working-dir . -- python jobs/ingest.py [args]`: the same code as `tickray ingest`."""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("ingest"))
