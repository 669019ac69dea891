"""`lm_eval` with the test stand-in model `oracle` registered (same entry point as the console script)."""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle_model  # noqa: E402,F401  (registers --model oracle)
from lm_eval.__main__ import cli_evaluate  # noqa: E402


cli_evaluate()
