"""The sdist as a user or a distribution gets it: built from a checkout, it carries what the
test suite uses, the generated completion and man page (matching the parser) and the commit
it was built from; unpacked and compiled, the suite's quick subset (the tests cibuildwheel
runs against each wheel) passes from it."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from fastmqtt import cli_docs
from fastmqtt.build_info import git_commit
from fastmqtt.config import tomllib

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(600)]

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    "build", "dist", "*.so", "*.c", "*.html", "__pycache__", "*.egg-info", ".pytest_cache",
    ".hypothesis", ".benchmarks", ".venv*", "share", "_build_info.py",
)  # fmt: skip


def _env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTMQTT_NO_EXTENSIONS")
    }


def _run(args: list[object], cwd: pathlib.Path, timeout: float, **env: str) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env={**_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def quick_subset() -> list[str]:
    """The test files of [tool.cibuildwheel] test-command: one list for wheels and sdists."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return re.findall(r"\{project\}/(\S+)", config["tool"]["cibuildwheel"]["test-command"])


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> pathlib.Path:
    """The sdist of a copy of the checkout (git metadata included), unpacked."""
    tmp = tmp_path_factory.mktemp("sdist")
    shutil.copytree(ROOT, tmp / "tree", ignore=NOT_SOURCES)
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", tmp / "dist"], tmp / "tree", 120)
    (sdist,) = (tmp / "dist").glob("fastmqtt-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (tree,) = (tmp / "unpacked").iterdir()
    return tree


def test_sdist_carries_what_the_tests_use(unpacked):
    used = ["LICENSE", "tools/fuzz_parse.py", "bench/haproxy.cfg", "bench/e2e/run.py"]
    used += ["tests/data/haproxy/coverage.cfg", "tests/support/twins.py", *quick_subset()]
    for path in used:
        assert (unpacked / path).is_file(), path
    corpus = sorted(p.name for p in (unpacked / "tests/corpus/fuzz_parse").iterdir())
    assert corpus == sorted(p.name for p in (ROOT / "tests/corpus/fuzz_parse").iterdir())


def test_sdist_records_the_commit_and_ships_completion_matching_the_parser(unpacked):
    recorded = (unpacked / "src/fastmqtt/_build_info.py").read_text()
    commit = git_commit(str(ROOT))
    assert commit is not None
    assert f"COMMIT = '{commit.removesuffix('+dirty')}" in recorded
    shipped = {p.name: p.read_text() for p in (unpacked / "src/fastmqtt/share").iterdir()}
    assert shipped == cli_docs.generate()
    assert set(shipped) == {"fastmqtt.bash", "_fastmqtt", "fastmqtt.1"}


def test_quick_subset_passes_from_the_unpacked_sdist(unpacked):
    _run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-j", "2"], unpacked, 480)
    out = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *quick_subset()],
        unpacked,
        480,
        PYTHONPATH=str(unpacked / "src"),
    )
    assert re.search(r"\d+ passed", out) and "failed" not in out, out[-2000:]
