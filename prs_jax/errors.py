"""The one error type that every layer may raise for a problem the user can fix.

A UserError's message names the problem and the fix (a field and the values allowed, a missing
checkpoint and the command that makes one, a full disk and what to free). The commands print it
as one line and exit with code 2 (prs_jax/cli.py); any other exception is a bug of ours and keeps
its traceback. It sits below every other layer so that data, training and analysis can all
raise it without importing each other.
"""


class UserError(Exception):
    """A problem the user can fix; the message says what and how, on one line."""
