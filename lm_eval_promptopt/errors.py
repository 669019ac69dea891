"""The one exception type whose message is shown to the user as a one-line error."""

from __future__ import annotations


class PromptOptError(Exception):
    """A problem the user can fix: the message names the problem and the fix."""
