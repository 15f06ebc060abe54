"""The one error class for bad input.

Every validator in sd_keras raises :class:`InputError` (a ``ValueError``, so callers that catch ``ValueError`` keep
working) with one line naming the argument, file or field and the cause. The front ends turn this class, and only
this class, into a usage error: the CLI prints ``sd-keras: error: <message>`` and exits 2, the server answers 422.
Anything else is a bug and shows as a traceback (CLI) or a 500 with a log line (server).

A value of the wrong type raises :class:`InputTypeError`, an ``InputError`` that is also a ``TypeError`` (what
Python's own checks raise, so callers that catch ``TypeError`` keep working).

>>> from sd_keras.errors import InputError, InputTypeError
>>> issubclass(InputError, ValueError), issubclass(InputTypeError, InputError), issubclass(InputTypeError, TypeError)
(True, True, True)
"""


class InputError(ValueError):
    """Bad input from the caller: a value, file or combination that cannot be used (one line naming the cause)."""


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type (a prompt that is not a str): an ``InputError`` and a ``TypeError``."""
