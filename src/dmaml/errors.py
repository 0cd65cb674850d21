"""The errors a user can cause and fix: the CLI prints their message as one line and exits 2.

Each message names the file or setting at fault and what to do about it.
"""


class UserError(Exception):
    """Base of every error caused by input (settings, files, interrupted or diverged runs)."""


class ConfigError(UserError, ValueError):
    """A setting with a wrong value."""


class DatasetError(UserError, ValueError):
    """A dataset source or file that cannot be used."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be written, read or resumed."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that is not a readable checkpoint (truncated, overwritten); ``what``
    says so without the fix, for a caller that has another."""

    def __init__(self, path, what: str, fix: str):
        super().__init__(f"{path}: {what}; {fix}")
        self.path, self.what = path, what


class TrainingDiverged(UserError, RuntimeError):
    """A worker produced a non-finite loss or parameter."""


class TrainingInterrupted(UserError, RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class ReportError(UserError, ValueError):
    """Run folders that cannot make the requested table or figure."""
