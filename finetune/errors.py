"""The base of every fine-tune user error (bad init checkpoint, unexpandable resolution, class mismatch, ...)."""


class FinetuneError(ValueError):
    """A fine-tune or evaluation request that cannot be carried out as asked; shown as one line."""


class InitError(FinetuneError):
    """The init checkpoint cannot be read or does not fit the model."""
