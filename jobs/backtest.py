"""`ray job submit --working-dir . -- python jobs/backtest.py --config jobs/configs/backtest-synthetic.yaml
--report backtest.html`: a walk-forward backtest with its report (the same code as `tickray backtest`)."""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("backtest"))
