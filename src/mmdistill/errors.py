"""User-facing errors.

Anything a user can cause (a bad config, a corrupt file, a missing dataset) raises a subclass of
:class:`MMDistillError`. The CLI prints these as one line and exits non-zero, without a traceback;
any other exception is a bug and keeps its traceback.
"""


class MMDistillError(Exception):
    """Base class of errors caused by user input rather than by a bug."""


class ConfigError(MMDistillError):
    """A config key is unknown, missing or of the wrong type. The message names the key."""


class DataError(MMDistillError):
    """A dataset is missing, corrupt or inconsistent. The message names the file and sample."""


class CheckpointError(MMDistillError):
    """A checkpoint is missing, corrupt or not an mmdistill checkpoint."""


class RunDirError(MMDistillError):
    """A run directory cannot be created, reused or written (not empty, locked, disk full, read-only)."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM); a KeyboardInterrupt, so nothing swallows it.

    ``exit_code`` is what the CLI exits with: 128 + the signal number (143 for SIGTERM).
    """

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
