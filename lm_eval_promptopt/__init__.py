"""Optimize-then-evaluate prompt optimization inside lm-evaluation-harness.

Importing this package is cheap on purpose: the startup hook imports it in every interpreter.
"""

__version__ = "0.1.0"
