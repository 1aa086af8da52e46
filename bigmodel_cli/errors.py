"""Exit codes and the user-facing error type.

    0 ok    1 the job failed    2 usage or config error    130 interrupted (Ctrl-C)
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in what the user asked for (config, paths, input files).

    The message is shown as is, without a traceback, and the process exits with 2.
    It should say what was wrong, what would be right, and where we looked.
    """
