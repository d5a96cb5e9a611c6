"""Errors raised by rftlib: each names the problem and the fix."""


class RftError(Exception):
    """Base class of rftlib's own errors."""


class ParameterError(RftError, ValueError):
    """A parameter has a bad value; the message names it, its value and what is allowed."""


class CheckpointError(RftError):
    """A checkpoint file cannot be trusted or read (missing, truncated, corrupt, unsafe, mismatched)."""


class DataNotFoundError(RftError, FileNotFoundError):
    """A data set is not where it is expected; the message says where and how to get it."""


class NumericalError(RftError, FloatingPointError):
    """A loss, weight or measurement became NaN or infinite."""
