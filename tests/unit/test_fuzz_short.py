"""A short run of tools/fuzz_parse.py (the long one, under AddressSanitizer, is the script itself).

The checked-in corpus is replayed in-process, then libFuzzer (atheris) mutates it for a few
seconds in a child process; new inputs go to a scratch directory, never into the repository.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys
from types import ModuleType, SimpleNamespace

import pytest

from fastmqtt import _ws_py, packets

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "fuzz_parse.py"
CORPUS = ROOT / "tests" / "corpus" / "fuzz_parse"
RUNS = 20_000


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_parse", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return _tool()


def test_checked_in_corpus_passes_the_harness(tool: ModuleType) -> None:
    parse, ws = tool.load_compiled(None)
    harness = tool.Harness(parse, ws)
    inputs = sorted(CORPUS.iterdir())
    assert len(inputs) >= 16
    for path in inputs:
        harness(path.read_bytes())
    assert {path.read_bytes()[0] % 4 for path in inputs} == {0, 1, 2, 3}  # every target seeded


def test_harness_reports_a_disagreement(tool: ModuleType) -> None:
    """The oracle can fail: a 'compiled' inspector that waits forever is caught."""
    lazy = SimpleNamespace(inspect_connect=lambda data, **kw: None)
    harness = tool.Harness(lazy, _ws_py)
    with pytest.raises(AssertionError, match="compiled"):
        harness(bytes([0, 2]) + packets.connect("fuzz"))


def test_short_fuzz_run_finds_no_crash(tmp_path: pathlib.Path) -> None:
    # The replays above need nothing; libFuzzer comes with the `fuzz` extra, which CI installs
    # (atheris has no wheel for some of the platforms wheels are built and tested on).
    pytest.importorskip("atheris", reason="libFuzzer runs need the fuzz extra")
    result = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            f"-runs={RUNS}",
            "-max_total_time=90",
            str(tmp_path),
            str(CORPUS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # a crash-<sha1> file would land here, not in the repository
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done is not None and int(done[1]) == RUNS, result.stderr[-1000:]
    assert not list(tmp_path.glob("crash-*"))
