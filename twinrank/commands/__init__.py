"""More `twinrank` commands, one module per command group.

Every module in this package defines ``register(app: typer.Typer) -> None``, which adds its
commands to the top-level app; `twinrank.cli` calls them all (in module-name order), so a new
command group is a new file here and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)
