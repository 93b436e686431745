"""`ray job submit --working-dir . -- python jobs/backtest.py --config jobs/configs/backtest-synthetic.yaml
--report backtest.html`: a walk-forward backtest with its report (the same code as `tickray backtest`)."""

import sys

from tickray.cli import main

if __name__ == "__main__":
    sys.exit(main(["backtest", *sys.argv[1:]]))
