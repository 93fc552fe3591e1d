"""The two implementations of each hot path: the compiled module and its plain-Python twin.

``fastmqtt._parse`` / ``fastmqtt._parse_py``, ``_balance`` / ``_balance_py``, ``_ws`` /
``_ws_py``, ``_stick`` / ``_stick_py``. The ``implementation`` fixture (tests/conftest.py)
runs a test once per implementation; differential tests that need both at once use
:func:`compiled` and :func:`twin`. Under ``FASTMQTT_NO_EXTENSIONS=1`` the run is about the
twins: the compiled modules are left out even when a build is present (CI runs the whole
suite both ways).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from fastmqtt._accel import NO_EXTENSIONS

CONCERNS = ("parse", "balance", "ws", "stick")
# The implementations this run covers, in the order tests are parametrized (ids "c", "py").
IMPLEMENTATIONS: tuple[str, ...] = ("py",) if NO_EXTENSIONS else ("c", "py")


def twin(concern: str) -> ModuleType:
    """The plain-Python twin, e.g. ``fastmqtt._parse_py``."""
    return importlib.import_module(f"fastmqtt._{concern}_py")


def compiled(concern: str) -> ModuleType | None:
    """The compiled module, or None in a FASTMQTT_NO_EXTENSIONS=1 run; otherwise a missing or
    broken build raises ImportError (it must never pass as the fallback)."""
    if NO_EXTENSIONS:
        return None
    return importlib.import_module(f"fastmqtt._{concern}")


@dataclass(frozen=True)
class Implementation:
    """One implementation of every hot path: ``impl.parse``, ``impl.balance``, ``impl.ws``,
    ``impl.stick``."""

    name: str  # "c" or "py"

    def module(self, concern: str) -> ModuleType:
        module = twin(concern) if self.name == "py" else compiled(concern)
        assert module is not None, f"{self.name} is not part of this run"
        return module

    @property
    def parse(self) -> ModuleType:
        return self.module("parse")

    @property
    def balance(self) -> ModuleType:
        return self.module("balance")

    @property
    def ws(self) -> ModuleType:
        return self.module("ws")

    @property
    def stick(self) -> ModuleType:
        return self.module("stick")


def implementations() -> list[Implementation]:
    """Every implementation of this run, compiled first."""
    return [Implementation(name) for name in IMPLEMENTATIONS]
