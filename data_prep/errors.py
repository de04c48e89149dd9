"""The one error type for user mistakes and bad input: the command line prints it as one line, exit 2."""


class DataPrepError(Exception):
    """A user-facing problem (bad path, bad option, unusable input) with a one-line message."""
