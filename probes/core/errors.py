"""The one exception type users see: a single line saying what is wrong and how to fix it."""


class ToolkitError(Exception):
    """Bad input or a missing asset. The message is one line, meant to be printed as is."""
