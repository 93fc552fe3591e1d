"""The package as a user gets it: an sdist built from a clean copy of the tree and a wheel built
from that sdist (`python -m build`), the wheel installed in a fresh venv and run from outside
the tree, and the suite's quick subset run from the unpacked sdist against the wheel's modules.

This proves MANIFEST.in carries everything the build and the tests need, that the compiled
modules ship in the wheel and are the ones imported, and that the installed command works (the
demo against real Mosquitto brokers). It needs PyPI for uvloop, the only runtime dependency.
The manylinux step (auditwheel repair) and the cibuildwheel matrix are described in the README.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from fastmqtt import cli_docs
from fastmqtt.tools.brokers import free_port
from tests.test_sdist import quick_subset

# 50-200 s measured here (2 cores shared with other builds): compiling is CPU-bound.
pytestmark = [pytest.mark.wheel, pytest.mark.timeout(600)]

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILED = sorted(path.stem for path in (ROOT / "src" / "fastmqtt").glob("*.pyx"))
# Build products and caches of the working tree; the build must make its own.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", "build", "dist", "*.so", "*.c", "*.html", "__pycache__", "*.egg-info",
    ".pytest_cache", ".hypothesis", ".benchmarks", ".venv*",
)  # fmt: skip


def _run(
    args: list[object], cwd: pathlib.Path, timeout: float, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTMQTT_NO_EXTENSIONS")}
    env |= extra or {}
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
    """The sdist of a copy (the build writes egg-info into its tree), and the wheel built from
    that sdist (what `python -m build` does without --sdist/--wheel)."""
    tmp = tmp_path_factory.mktemp("build")
    shutil.copytree(ROOT, tmp / "tree", ignore=NOT_SOURCES)
    # Compile the extensions two at a time (setuptools reads this extra config from the env).
    (tmp / "parallel.cfg").write_text("[build_ext]\nparallel = 2\n")
    build = [sys.executable, "-m", "build", "--no-isolation"]
    parallel = {"DIST_EXTRA_CONFIG": str(tmp / "parallel.cfg")}
    _run([*build, "--outdir", tmp / "dist", tmp / "tree"], tmp, timeout=480, extra=parallel)
    return tmp / "dist"


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> pathlib.Path:
    """A fresh venv with nothing but the wheel and its dependencies; its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", root], root, timeout=60)
    (wheel,) = dist.glob("*.whl")
    _run([root / "bin" / "python", "-m", "pip", "install", "-q", wheel], root, timeout=180)
    return root / "bin"


def test_sdist_carries_what_the_build_needs(dist):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for stem in COMPILED:
        assert f"src/fastmqtt/{stem}.pyx" in names
        assert f"src/fastmqtt/{stem}.pyi" in names
    for path in (ROOT / "src" / "fastmqtt").rglob("*.pxd"):
        assert str(path.relative_to(ROOT)) in names
    for path in ("README.md", "docs/config.md", "examples/lb.toml", "contrib/fastmqtt.service"):
        assert path in names
    assert not [name for name in names if name.endswith((".so", ".c"))]


def test_wheel_ships_compiled_modules_and_stubs(dist):
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for stem in COMPILED:
        assert [n for n in names if n.startswith(f"fastmqtt/{stem}.cpython-") and n.endswith(".so")]
        assert f"fastmqtt/{stem}.pyi" in names
    assert "fastmqtt/py.typed" in names
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n.rsplit("/", 1)[1]: archive.read(n).decode() for n in names if "/share/" in n}
    assert shipped == cli_docs.generate()  # completion and man page match the parser


def test_installed_wheel_runs_compiled(venv, tmp_path):
    """From a directory outside the tree, so nothing can come from the sources."""
    version = _run([venv / "fastmqtt", "--version"], tmp_path, timeout=30).stdout
    assert version.startswith("fastmqtt 0.") and "(cython): the MQTT-aware load balancer" in version
    assert "build: compiled Cython modules (Cython 3." in version and "OpenSSL" in version
    where = _run(
        [venv / "python", "-c", "import fastmqtt._parse as m; print(m.__file__)"],
        tmp_path,
        timeout=30,
    ).stdout.strip()
    assert where.startswith(str(venv.parent)) and where.endswith(".so")
    checked = _run([venv / "fastmqtt", "check", ROOT / "examples" / "lb.toml"], tmp_path, 30)
    assert ": OK: " in checked.stdout


def test_installed_wheel_runs_the_demo(venv, tmp_path):
    port = free_port()
    demo = [
        venv / "fastmqtt",
        "demo",
        "--port",
        port,
        "--stats-port",
        free_port(),
        "--duration",
        "1",
    ]
    out = _run(demo, tmp_path, timeout=60).stdout
    assert "4 clients" in out and out.count("3 clients") == 2
    assert f"127.0.0.1:{port}" in out


def test_quick_subset_passes_from_the_sdist_against_its_wheel(dist, tmp_path):
    """The tests cibuildwheel runs in each wheel, taken from the sdist, on the wheel's modules."""
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "sdist", filter="data")
    (tree,) = (tmp_path / "sdist").iterdir()
    (wheel,) = dist.glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *quick_subset()]
    out = _run(command, tree, timeout=480, extra={"PYTHONPATH": str(tmp_path / "site")}).stdout
    assert re.search(r"\d+ passed", out) and "failed" not in out, out[-2000:]
