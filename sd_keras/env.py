"""The ``SD_KERAS_*`` environment variables, read in one place with one set of rules.

``flag`` reads a switch: ``1``, ``true``, ``yes``, ``on`` mean on and ``0``, ``false``, ``no``, ``off`` mean off
(any case, surrounding spaces ignored); anything else is an ``InputError`` naming the variable, so a typo such as
``SD_KERAS_TF_XLA=ture`` is refused instead of silently read as off. ``path`` reads a folder or file name (``~``
expanded). For both, a variable that is unset or empty gives the default. ``text`` returns a value as it is
(secrets: an empty value is the caller's to refuse).

``VARIABLES`` lists every variable sd_keras reads, with its meaning; README.md's table shows the same list.

Example:
    >>> import os
    >>> os.environ["SD_KERAS_EXAMPLE"] = " Off "
    >>> flag("SD_KERAS_EXAMPLE", True)
    False
    >>> os.environ["SD_KERAS_EXAMPLE"] = "ture"
    >>> flag("SD_KERAS_EXAMPLE", True)
    Traceback (most recent call last):
    ...
    sd_keras.errors.InputError: SD_KERAS_EXAMPLE='ture': not a switch value (on: 1/true/yes/on, off: 0/false/no/off)
    >>> del os.environ["SD_KERAS_EXAMPLE"]
    >>> flag("SD_KERAS_EXAMPLE", None) is None
    True
"""

import os

from sd_keras.errors import InputError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

# Every variable sd_keras reads: name -> (default, meaning). README.md's "Environment variables" table lists these.
VARIABLES = {
    "SD_KERAS_CACHE": ("~/.cache/sd_keras", "folder of downloaded weights (one sub-folder per preset) and of the "
                                            "JAX compilation cache (xla/)"),
    "SD_KERAS_COMPILATION_CACHE": ("on", "JAX's persistent compilation cache in $SD_KERAS_CACHE/xla (flag)"),
    "SD_KERAS_TF_XLA": ("auto", "TensorFlow compiles with XLA: on with a GPU/TPU or for small models on a CPU "
                                "(flag; overrides the choice)"),
    "SD_KERAS_CONV_AS_MATMUL": ("on", "CPU TensorFlow runs stride-1 convolutions with wide kernels as one matrix "
                                      "product (flag)"),
    "SD_KERAS_API_KEY": ("unset", "the key `sd-keras serve` requires on every endpoint but /health "
                                  "(as --api-key, kept out of ps)"),
    "SD_KERAS_ARTIFACTS": ("unset", "tests: folder where the web page test copies its screenshot"),
}


def _value(name):
    value = os.environ.get(name)
    return None if value is None or not value.strip() else value


def flag(name, default):
    """The switch ``name`` as True or False; ``default`` (any value, e.g. None for "decide yourself") when unset
    or empty. Raises ``InputError`` naming the variable for a value that is no on/off word."""
    value = _value(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise InputError(f"{name}={value!r}: not a switch value (on: {'/'.join(TRUE_WORDS)}, off: "
                     f"{'/'.join(FALSE_WORDS)})")


def path(name, default=None):
    """The file or folder name in ``name`` (``~`` expanded); ``default`` when unset or empty."""
    value = _value(name)
    return default if value is None else os.path.expanduser(value.strip())


def text(name, default=None):
    """The value of ``name`` exactly as set (an empty value included); ``default`` when unset."""
    value = os.environ.get(name)
    return default if value is None else value
