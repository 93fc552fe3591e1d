"""Build the Cython extensions of fastmqtt.

Environment:
  FASTMQTT_NO_EXTENSIONS=1  build nothing compiled (pure-Python install)
  FASTMQTT_DEBUG=1          annotate HTML, line tracing, FASTMQTT_DEBUG C macro
  FASTMQTT_SANITIZE=1       build with AddressSanitizer + UBSan
"""

import os
import pathlib
import sys

from setuptools import setup

HERE = pathlib.Path(__file__).parent
PKG = HERE / "src" / "fastmqtt"
MIN_CYTHON = (3, 1)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _extensions():
    if _flag("FASTMQTT_NO_EXTENSIONS") or sys.implementation.name != "cpython":
        return []
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError as exc:  # pragma: no cover - build requirement
        raise RuntimeError("fastmqtt needs Cython>=3.1 to build its extensions") from exc
    if tuple(int(p) for p in Cython.__version__.split(".")[:2]) < MIN_CYTHON:
        raise RuntimeError(f"fastmqtt needs Cython>=3.1, found {Cython.__version__}")

    from setuptools import Extension

    debug = _flag("FASTMQTT_DEBUG")
    cflags = ["-O2", "-Wall", "-Wsign-compare", "-Wno-unused-function", "-fno-strict-aliasing"]
    ldflags: list[str] = []
    macros = [("FASTMQTT_DEBUG", "1" if debug else "0")]
    if debug:
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    if _flag("FASTMQTT_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
        cflags += san
        ldflags += san
    exts = [
        Extension(
            f"fastmqtt.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            include_dirs=[str(PKG / "includes")],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            define_macros=macros,
        )
        for pyx in sorted(PKG.glob("*.pyx"))
    ]
    return cythonize(
        exts,
        language_level=3,
        annotate=debug,
        compiler_directives={
            "embedsignature": True,
            "linetrace": debug,
            "cdivision": True,
        },
    )


setup(ext_modules=_extensions())
