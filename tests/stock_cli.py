"""`lm_eval` exactly as without the plugin: the startup hook is taken off before lm-eval loads."""

import sys


sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != "lm_eval_promptopt.hook"]
from lm_eval.__main__ import cli_evaluate  # noqa: E402


cli_evaluate()
