"""User-facing errors: one line saying what is wrong and where, plus a hint saying how to fix it."""
from __future__ import annotations


class SpxError(Exception):
    """An error caused by the user's input (exit code 2), printed without a traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, where: str | None = None):
        self.message = message
        self.hint = hint
        self.where = where
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def __reduce__(self):  # keep hint and where when raised in a worker process
        return (self.__class__, (self.message, self.hint, self.where))


class RunFailed(SpxError):
    """A native toolkit step failed; the run directory keeps its log."""

    exit_code = 1
