"""The exception raised for code words that cannot be decoded."""


class CodeError(ValueError):
    """A code word is corrupted, truncated, inconsistent, or needs a prior it was not given."""
