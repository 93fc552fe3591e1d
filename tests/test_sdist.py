"""The sdist as a distribution gets it, built from the checkout: it carries what the test suite
uses, the generated completion and man page (matching the parser) and the commit it was built
from. (tests/test_wheel.py builds the wheel from an sdist and runs the suite's quick subset from
the unpacked sdist against it.)"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest

from fastmqtt import cli_docs
from fastmqtt.build_info import git_commit
from fastmqtt.config.load import tomllib

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(300)]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quick_subset() -> list[str]:
    """The test files of [tool.cibuildwheel] test-command: one list for wheels and sdists."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return re.findall(r"\{project\}/(\S+)", config["tool"]["cibuildwheel"]["test-command"])


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> pathlib.Path:
    """The checkout's sdist (egg-info written outside the tree), unpacked. No compiling."""
    tmp = tmp_path_factory.mktemp("sdist")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTMQTT_NO_EXTENSIONS")}
    command = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", tmp, "sdist", "-d", tmp]
    done = subprocess.run(
        [str(arg) for arg in command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = tmp.glob("fastmqtt-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (tree,) = (tmp / "unpacked").iterdir()
    return tree


def test_sdist_carries_what_the_tests_use(unpacked):
    used = ["LICENSE", "tools/fuzz_parse.py", "tools/test", "bench/haproxy.cfg", "bench/e2e/run.py"]
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
