"""Train the planted-instruction model (benchmarks/planted) from scratch into OUTDIR.

Deterministic for a fixed seed on a given machine; about two minutes on 2 CPU cores.
Check it with `python scripts/check_planted_model.py OUTDIR`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is in the checkout, not the package
from benchmarks.planted import train_planted_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", help="where the model and tokenizer are saved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100, help="print the loss every N steps (0: never)")
    args = parser.parse_args()
    start = time.perf_counter()
    path = train_planted_model(args.outdir, args.seed, log_every=args.log_every)
    print(f"saved {path}; training wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
