"""The one exception type for mistakes a user can make (bad file, bad option).

The CLI prints its message without a traceback and exits non-zero; anything
else escaping is a bug and keeps its traceback.
"""


class ExpclipError(Exception):
    """A user-facing error; the message names the file, line or option at fault."""


class PeerFailed(ExpclipError):
    """Another process of the same launched job failed and reported why; this one exits quietly."""


class Interrupted(ExpclipError):
    """Ctrl-C or SIGTERM stopped the work at a safe point; `status` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        self.status = 128 + signum
        super().__init__("interrupted: re-run the same command to resume")
