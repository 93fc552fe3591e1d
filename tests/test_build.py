"""A broken build must never pass as the plain-Python fallback.

Unless FASTMQTT_NO_EXTENSIONS=1, every src/fastmqtt/*.pyx must import as a compiled
extension module; with it, the selection modules must have picked the twins.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import pathlib
import subprocess
import sys

import pytest

from fastmqtt import _accel, _parse_py, parse
from tests.vectors import MINIMAL_311

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


PROBE_PYX = """
from libc.stdint cimport uint8_t
from fastmqtt._parse cimport ConnectScan, connect_scan

def client_id_span(bytes data):
    cdef ConnectScan scan
    cdef const uint8_t *p = <const uint8_t *><char *>data
    cdef Py_ssize_t n = len(data)
    cdef int rc
    with nogil:
        rc = connect_scan(p, n, 65536, True, &scan)
    return rc, scan.client_id.start, scan.client_id.length, scan.packet_length
"""
PROBE_SETUP = f"""
from Cython.Build import cythonize
from setuptools import setup
setup(ext_modules=cythonize("probe.pyx", include_path=[{str(PACKAGE.parent)!r}], quiet=True))
"""


def test_other_cython_modules_can_cimport_the_scan(tmp_path: pathlib.Path) -> None:
    # The WebSocket/listener fast paths call connect_scan through _parse.pxd, GIL released.
    if _accel.NO_EXTENSIONS:
        assert _accel.IMPLEMENTATION == "python"
        return
    (tmp_path / "probe.pyx").write_text(PROBE_PYX)
    (tmp_path / "setup.py").write_text(PROBE_SETUP)
    build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    subprocess.run(build, cwd=tmp_path, check=True, capture_output=True, timeout=240)
    sys.path.insert(0, str(tmp_path))
    try:
        probe = importlib.import_module("probe")
    finally:
        sys.path.remove(str(tmp_path))
    data = bytes.fromhex(MINIMAL_311)
    assert probe.client_id_span(data) == (1, 14, 4, 18)
    assert probe.client_id_span(data[:10])[0] == 0
    assert probe.client_id_span(b"\x20" + data[1:])[0] == -1
