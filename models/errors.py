"""The exception raised for user mistakes around the model (bad sizes, weight files)."""


class ModelError(ValueError):
    """A problem a user can fix: the message names the value or file and what was expected."""
