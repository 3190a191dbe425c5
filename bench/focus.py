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
    parser.add_argument("--update", action="store_true",
                        help="rewrite these screens' rows of bench/RESULTS.md (that backend)")
    args = parser.parse_args(argv)
    # The cached summary as it is: never regenerate (or delete) the data set from here.
    summary = run.json.loads(run.summary_path(args.backend, args.size).read_text())
    pattern = re.compile(args.match, re.I)
    run.SCREENS[:] = [s for s in run.SCREENS if pattern.search(s.name)]
    rows, _context = run.measure_screens(args.backend, args.size, summary, args.runs)
    if args.update:
        update_results(args.backend, rows)


def update_results(backend, rows):
    """Replace the rows of the measured screens in the backend's table of RESULTS.md."""
    title = {"sqlite": "## SQLite", "postgres": "## PostgreSQL"}[backend]
    text = run.RESULTS.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    end = len(text) if end < 0 else end
    section = text[start:end]
    for row in rows:
        if row.get("status") != "ok":
            continue
        old = next((line for line in section.splitlines()
                    if line.startswith(f"| {row['name']} |")), None)
        if old is None:
            continue
        new = (f"| {row['name']} | {row['median']:.1f} | {row['p95']:.1f} | "
               f"{row['floor_median']:.2f} | {row['ratio']:.1f}× | {row['queries']} | "
               f"`{row['url']}` (focused run) |")
        section = section.replace(old, new)
    run.RESULTS.write_text(text[:start] + section + text[end:])


if __name__ == "__main__":
    main()
