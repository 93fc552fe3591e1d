"""Build the Cython extensions of fastmqtt.

Environment:
  FASTMQTT_NO_EXTENSIONS=1  build nothing compiled (pure-Python install)
  FASTMQTT_DEBUG=1          annotate HTML, line tracing, FASTMQTT_DEBUG C macro
  FASTMQTT_SANITIZE=1       build with AddressSanitizer + UBSan
"""

import os
import pathlib
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

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
    elif not debug:
        # Python's own CFLAGS carry -g: without this, debug info is two thirds of each module.
        cflags.append("-g0")
        ldflags.append("-Wl,--strip-debug")
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


def _commit() -> str | None:
    """The checkout's short commit (+dirty), when building from git."""
    sys.path.insert(0, str(PKG.parent))
    try:
        from fastmqtt.build_info import git_commit
    finally:
        sys.path.pop(0)
    return git_commit(str(HERE)) if (HERE / ".git").exists() else None


def _build_info_text() -> str:
    try:
        import Cython

        cython = Cython.__version__
    except ImportError:  # a pure-Python build
        cython = ""
    return (
        "# Written by setup.py at build time; `fastmqtt --version` prints it.\n"
        f"COMMIT = {_commit() or ''!r}\nCYTHON = {cython!r}\n"
    )


def _write_cli_docs(directory: pathlib.Path) -> None:
    """Shell completion and man page from the argparse parser (fastmqtt/cli_docs.py), run on the
    sources being built, as plain Python (the extensions may not be built yet)."""
    env = {**os.environ, "PYTHONPATH": str(PKG.parent), "FASTMQTT_NO_EXTENSIONS": "1"}
    command = [sys.executable, "-m", "fastmqtt.cli_docs", str(directory)]
    subprocess.run(command, env=env, check=True)


class BuildPy(build_py):
    """Writes fastmqtt/share/ (completion, man page) and records the commit and Cython version
    in fastmqtt/_build_info.py; a tree without git (an unpacked sdist) keeps the record the
    sdist carries."""

    def run(self) -> None:
        super().run()
        package = pathlib.Path(self.build_lib) / "fastmqtt"
        _write_cli_docs(package / "share")
        target = package / "_build_info.py"
        if _commit() is not None or not target.exists():
            target.write_text(_build_info_text())


class SDist(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        package = pathlib.Path(base_dir) / "src" / "fastmqtt"
        _write_cli_docs(package / "share")
        target = package / "_build_info.py"
        target.unlink(missing_ok=True)  # a hard link into the checkout otherwise
        target.write_text(_build_info_text())


setup(ext_modules=_extensions(), cmdclass={"build_py": BuildPy, "sdist": SDist})
