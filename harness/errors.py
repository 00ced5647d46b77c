"""The one error type for bad input: its message is a single line naming the problem and the fix."""


class UsageError(Exception):
    """Bad input. Scripts print `<prog>: error: <message>` and exit 2; nothing is left running."""
