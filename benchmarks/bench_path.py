"""Benchmark of the whole study path (precision, α sweep, single-layer path levers, sharpness), one run.

A thin command line over :func:`rftlib.book.bench.run_benchmarks` (also ``rft bench``)::

    python benchmarks/bench_path.py --quick            # about 2 minutes on 2 CPU cores
    python benchmarks/bench_path.py --out /tmp/path.json

Writes JSON (``--out``, default ``book/results/benchmarks/path.json``), each ratio with its goal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rftlib.book.bench import run_benchmarks  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about 2 minutes: fewer images and α, no ViT-B/32")
    ap.add_argument("--world", default="fashion")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="book/results/benchmarks/path.json")
    args = ap.parse_args(argv)
    res = run_benchmarks(args.quick, args.out, world=args.world, threads=args.threads)
    for name, r in res["ratios"].items():
        shown = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"  {name:>28}: {shown}  (goal ≥ {r['goal']:g}; met: {r['met']})  {r['note']}")
    print(f"wrote {args.out} in {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
