"""Benchmarks share the test vectors and the `impl` fixture (compiled module vs twin)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

# bench/ is not a package, so make `tests.vectors` importable from the repository root.
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.vectors import parse_implementations  # noqa: E402

PARSE_IMPLS = parse_implementations()


@pytest.fixture(params=[m for _, m in PARSE_IMPLS], ids=[name for name, _ in PARSE_IMPLS])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param
