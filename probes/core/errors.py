"""The one exception type users see: a single line saying what is wrong and how to fix it."""


class ToolkitError(Exception):
    """Bad input or a missing asset: the error every public function raises for a user's mistake.

    Args:
        message: one line saying what is wrong and how to fix it, meant to be printed as is.
    """
