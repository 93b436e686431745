"""`ray job submit --working-dir . -- python jobs/bars.py --symbols BTCUSDT --timeframe 4h --start 2024-01-01
--end 2024-07-01 --ray --out bars_4h`: bars of any timeframe from the lake (the same code as `tickray bars`)."""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("bars"))
