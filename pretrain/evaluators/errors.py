"""The base of every evaluation user error (class count mismatch, too few shots, no samples)."""


class EvalError(ValueError):
    """An evaluation that cannot be carried out as asked; shown as one line."""
