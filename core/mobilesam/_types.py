"""Type aliases shared across the core."""

import os

#: Anything ``open()`` accepts as a file name.
PathLike = str | os.PathLike
