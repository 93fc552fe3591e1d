"""Benchmarks share the test vectors and the `implementation` fixture (compiled vs twin)."""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is not a package, so make `tests.vectors` importable from the repository root.
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.conftest import implementation  # noqa: E402, F401  (the one parametrizing fixture)
