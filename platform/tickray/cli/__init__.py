"""The `tickray` command line: a small dispatcher over the verb groups, `--help` on each verb."""

from __future__ import annotations

import argparse
import sys

from tickray.cli import bars, data, live, ops, research
from tickray.config import load_settings
from tickray.errors import TickrayError

GROUPS = (ops, data, bars, research, live)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickray", description="Ray-distributed platform for market tick data.")
    p.add_argument("--config", help="YAML settings file (TICKRAY_* environment variables win over it)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        code = args.fn(args, settings)
    except TickrayError as e:
        print(f"tickray {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"tickray {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
