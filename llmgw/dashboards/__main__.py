"""``python -m llmgw.dashboards [--check] [DIR]``: write the dashboards defined in
``llmgw/dashboards/catalog.py`` to DIR (default ``dashboards/grafana``); with ``--check``
write nothing and exit 1 when a file differs from its definition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmgw.dashboards.render import stale, write


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m llmgw.dashboards",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", default="dashboards/grafana", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a file is out of date")
    args = parser.parse_args()
    if args.check:
        out_of_date = stale(args.directory)
        for name in out_of_date:
            print(f"out of date: {args.directory / name}", file=sys.stderr)
        return 1 if out_of_date else 0
    for name in write(args.directory):
        print(f"wrote {args.directory / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
