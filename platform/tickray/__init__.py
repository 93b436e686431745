"""tickray: a Ray-distributed platform for market tick data."""

import os
import sys

# Ray >= 2.59 starts local heads with token auth (token in ~/.ray/auth_token), but a client joining one
# by address assumes auth is off unless told. Ray reads this once, when first imported: set after that,
# it would reach only the processes Ray spawns and split them from this one, so leave it alone then.
if "ray" not in sys.modules:
    os.environ.setdefault("RAY_AUTH_MODE", "token")

# Ray Serve's shorter request path: a replica runs the handlers on its own event loop (no thread hop per
# request) and the proxy reaches replicas over gRPC. About 30% more predictions a second on 2 cores
# (benchmarks/bench_serve.py). Serve's processes read these when they start, from the environment of the
# process that started Ray (cluster.yaml sets them for `ray up`); set them yourself to override.
SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
             "RAY_SERVE_PROXY_USE_GRPC": "1"}
for _name, _value in SERVE_ENV.items():
    os.environ.setdefault(_name, _value)

# Ray Train's controller looks at its workers every 2 s by default, and a fit waits for a few such looks
# after its workers finish: 5 s of a 13 s XGBoostTrainer start and stop on 2 cores. Every 0.2 s costs
# the workers a status call each; the controller reads this from the driver's environment.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

from tickray.config import Settings, load_settings
from tickray.errors import TickrayError

__all__ = ["Settings", "TickrayError", "load_settings"]
__version__ = "0.1.0"
