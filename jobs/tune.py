"""`ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/tune-xgboost.yaml [--resume]`:
Ray Tune over one base model, then the full training with the best parameters (as `tickray tune`)."""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("tune"))
