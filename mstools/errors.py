"""The one exception type that means "the user's input is wrong".

Commands turn it into a one-line message on stderr and exit code 1; anything else
is a bug and keeps its traceback under ``-v``.
"""


class InputError(Exception):
    """Bad input: the message says what is wrong and what to do, on one line."""


#: The heavy packages each install extra brings (pyproject.toml), by import name.
EXTRA_OF_PACKAGE = {"torch": "deep", "deepbet": "deep", "radiomics": "radiomics", "lightgbm": "learn",
                    "dask": "learn", "distributed": "learn", "itk": "register"}


def missing_extra(exc: ModuleNotFoundError) -> "InputError | None":
    """A one-line InputError for a heavy package that is not installed (which extra brings it), or
    None when the missing module is not one of them (then it is a bug or a broken install)."""
    package = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_PACKAGE.get(package)
    if extra is None:
        return None
    return InputError(f"{package} is not installed; this needs mstools' [{extra}] extra: "
                      f"pip install -e \".[{extra}]\" in the checkout (README, Installing)")
