"""`ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train-synthetic.yaml`:
base models, baselines and the stacked ensemble, registered in MLflow (the same code as `tickray train`)."""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("train"))
