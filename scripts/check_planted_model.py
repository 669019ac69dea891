"""Print the planted model's requirement table, scored by lm-eval on the held-out test docs.

For each op: the best keyword-free instruction (must stay <= 45 %), the worst correct-keyword
instruction (>= 95 %) and the best wrong-keyword instruction (<= 25 %), without and with the
chat template. Without MODEL_DIR, uses (and if needed trains) the cached model. Exits 1 on FAIL.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is in the checkout, not the package
from benchmarks.planted import check  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", nargs="?", help="a trained planted model (default: the cached one)")
    parser.add_argument("--no-chat", action="store_true", help="skip the --apply_chat_template pass")
    parser.add_argument("--limit", type=int, help="test docs per task (default: all 200)")
    args = parser.parse_args()
    start = time.perf_counter()
    result = check(args.model_dir, chat_template=(False,) if args.no_chat else (False, True), limit=args.limit)
    print(f"\n{'PASS' if result.passed else 'FAIL'} ({time.perf_counter() - start:.0f} s)")
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
