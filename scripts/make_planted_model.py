"""Train the planted-instruction model (benchmarks/planted) from scratch into OUTDIR.

Deterministic for a fixed seed on a given machine; about two minutes on 2 idle CPU cores. Prints the
wall time with the load average at the start and the end (the time grows with the machine's load).
Check it with `python scripts/check_planted_model.py OUTDIR`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is in the checkout, not the package
from benchmarks.planted import train_planted_model, training_progress  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", help="where the model and tokenizer are saved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--log-every",
        type=int,
        default=0,
        help="print the loss every N steps (0: never; the progress bar shows the steps)",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with training_progress():
        path = train_planted_model(args.outdir, args.seed, log_every=args.log_every)
    print(
        f"saved {path}; training wall time {time.perf_counter() - start:.1f} s; 1-min load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()
