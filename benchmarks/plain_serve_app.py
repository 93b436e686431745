"""The baseline of bench_serve.py: the very same FastAPI routes and Gateway code as the Serve app, run by
plain uvicorn in one process with every model family in process: what Serve is measured against.

Outside Serve, the routes' ``self`` (which Serve injects from the replica) is a Gateway built here.

    python benchmarks/plain_serve_app.py --config CFG.json --port P
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import uvicorn
from ray import serve
from tickray.serving.app import Gateway, api
from tickray.serving.config import ServeConfig


def plain_app(cfg: ServeConfig):
    deployed = Gateway.func_or_class  # Serve's wrapper around the class; the class itself is a base
    cls = next(c for c in deployed.__mro__ if c.__qualname__ == "Gateway" and c is not deployed)
    gateway = cls(cfg.model_copy(update={"split_families": False}), {})
    # Serve gave every route method `self=Depends(...)`, which asks the replica context for its instance:
    # this process is the one "replica".
    serve.get_replica_context = lambda: SimpleNamespace(servable_object=gateway)
    return api


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a ServeConfig as JSON (secrets included)")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = ServeConfig.model_validate(json.load(f))
    uvicorn.run(plain_app(cfg), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
