"""Package attributes imported on first use (PEP 562), so importing a package stays light."""

import importlib
import sys


def lazy_attributes(package: str, sources: dict[str, str]):
    """A module `__getattr__` for `package` that imports `sources[name]` (a submodule) the first
    time `name` is asked for and keeps it as a package attribute."""

    def __getattr__(name):
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{sources[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
