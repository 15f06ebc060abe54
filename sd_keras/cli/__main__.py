"""``python -m sd_keras.cli``: the ``sd-keras`` command."""

import sys

from sd_keras.cli import main

sys.exit(main())
