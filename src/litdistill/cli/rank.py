"""``litdistill rank DIR... [rank.by=f1] [rank.max_latency_ms=20] [-o OUT]``: the leaderboard of the runs
under the folders (reporting/leaderboard.py); and the same at the end of every multirun."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from litdistill.reporting.leaderboard import LIMITS, RANKABLE, rank, to_markdown

log = logging.getLogger("litdistill")
USAGE = "litdistill rank DIR [DIR ...] [rank.by=COLUMN] [rank.<limit>=VALUE ...] [-o OUT]"


def parse_options(options: list[str]) -> tuple[str | None, dict[str, float]]:
    """``rank.by=f1 rank.max_latency_ms=20`` -> (by, limits); anything else is refused, naming it."""
    by, limits = None, {}
    for option in options:
        key, _, value = option.partition("=")
        name = key.removeprefix("rank.")
        if not key.startswith("rank.") or not value:
            raise ValueError(f"{option!r}: expected rank.by=<column> or rank.<limit>=<number>")
        if name == "by":
            by = value
        elif name in LIMITS:
            try:
                limits[name] = float(value)
            except ValueError:
                raise ValueError(f"rank.{name}={value!r} must be a number") from None
        else:
            raise ValueError(f"unknown option rank.{name}; valid: rank.by, " + ", ".join(f"rank.{k}" for k in LIMITS))
    return by, limits


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="litdistill rank",
        usage=USAGE,
        description="Rank the students of finished runs (run, multirun or W&B run folders) on quality, "
        "speed and size; write leaderboard.md/.csv/.png and print the table.",
        epilog=f"rank.by: one of {RANKABLE} (default: the runs' metric). "
        f"Limits: {', '.join('rank.' + k for k in LIMITS)}.",
    )
    parser.add_argument("items", nargs="+", metavar="DIR", help="folders with runs (report.json below them)")
    parser.add_argument("-o", "--out", type=Path, default=None, help="where to write (default: the first DIR)")
    args = parser.parse_args(argv)
    dirs = [item for item in args.items if "=" not in item]
    try:
        by, limits = parse_options([item for item in args.items if "=" in item])
        if not dirs:
            raise ValueError(f"no folder given; usage: {USAGE}")
        board, files = rank(dirs, by, limits, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"litdistill rank: error: {error}", file=sys.stderr)
        sys.exit(1)
    print(to_markdown(board))
    print("\n".join(f"wrote {path}" for path in files.values()))


class RankAtMultirunEnd(Callback):
    """Hydra callback: a multirun ends by ranking its jobs (conf/hydra/default.yaml)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            board, files = rank([sweep_dir])
        except (ValueError, FileNotFoundError) as error:  # no finished job, or jobs of different tasks
            log.info("no leaderboard for %s: %s", sweep_dir, error)
            return
        log.info("leaderboard of %s:\n%s\n%s", sweep_dir, to_markdown(board), files["markdown"])
