"""The one exception type for mistakes a user can make (bad file, bad option).

The CLI prints its message without a traceback and exits non-zero; anything
else escaping is a bug and keeps its traceback.
"""


class ExpclipError(Exception):
    """A user-facing error; the message names the file, line or option at fault."""
