"""A broken build must never pass as the plain-Python fallback.

Unless FASTMQTT_NO_EXTENSIONS=1, every src/fastmqtt/*.pyx must import as a compiled
extension module; with it, the selection modules must have picked the twins.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import pathlib

import pytest

from fastmqtt import _accel, _parse_py, parse

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "fastmqtt"
COMPILED = sorted(p.stem for p in PACKAGE.glob("*.pyx"))


def test_there_is_something_to_compile() -> None:
    assert "_parse" in COMPILED


@pytest.mark.parametrize("name", COMPILED)
def test_extension_is_compiled(name: str) -> None:
    if _accel.NO_EXTENSIONS:
        assert _accel.IMPLEMENTATION == "python"
        return
    module = importlib.import_module(f"fastmqtt.{name}")
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert module.__file__ is not None and module.__file__.endswith(suffixes), module.__file__
    assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)


def test_parse_selected_once_by_accel() -> None:
    picked = parse.inspect_connect
    if _accel.NO_EXTENSIONS:
        assert picked is _parse_py.inspect_connect
    else:
        assert picked is importlib.import_module("fastmqtt._parse").inspect_connect
