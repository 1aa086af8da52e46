"""Exit codes and the user-facing error type.

    0 ok    1 the job failed    2 usage or config error
    130 interrupted (SIGINT, Ctrl-C)    143 stopped by SIGTERM (e.g. preemption)
"""

import signal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UsageError(Exception):
    """A mistake in what the user asked for (config, paths, input files).

    The message is shown as is, without a traceback, and the process exits with 2.
    It should say what was wrong, what would be right, and where we looked.
    """


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a resumable `last` checkpoint."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum = signum
        self.step = step

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""
