"""The one exception type users see: a one-line message, no traceback."""


class FactoryError(Exception):
    """An error with a message fit for the user: names the file and the field, says what to do."""
