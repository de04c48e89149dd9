"""The errors of joining and running a multi-process job, shown to the user as one line."""


class DistributedSetupError(ValueError):
    """This process cannot join the job as configured (e.g. more processes per node than GPUs)."""


class RankFailedError(RuntimeError):
    """Another rank failed where this one waited for it; the message is that rank's error, in one line."""
