"""Focused timing of some screens of bench/screens.py (no load run, no regeneration).

    python -m bench.focus --backend sqlite --match "queue|Sent|Gate|Provider" --runs 10
"""

import argparse
import re

from bench import run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--size", default="statewide", choices=("statewide", "quick"))
    parser.add_argument("--match", default="queue|Sent|Gate|Provider")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    # The cached summary as it is: never regenerate (or delete) the data set from here.
    summary = run.json.loads(run.summary_path(args.backend, args.size).read_text())
    pattern = re.compile(args.match, re.I)
    run.SCREENS[:] = [s for s in run.SCREENS if pattern.search(s.name)]
    run.measure_screens(args.backend, args.size, summary, args.runs)


if __name__ == "__main__":
    main()
