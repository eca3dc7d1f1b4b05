"""The one exception type that means "the user's input is wrong".

Commands turn it into a one-line message on stderr and exit code 1; anything else
is a bug and keeps its traceback under ``-v``.
"""


class InputError(Exception):
    """Bad input: the message says what is wrong and what to do, on one line."""
