"""`ray job submit --working-dir . -- python jobs/ingest.py [args]`: the same code as `tickray ingest`."""

import sys

from tickray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
