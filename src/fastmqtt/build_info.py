"""What identifies this build: `fastmqtt --version` prints it.

The PyPI name ``fastmqtt`` also belongs to an unrelated asyncio MQTT client, so the text says
what this is, which implementation runs (compiled or plain Python), the Cython that compiled
it, the Python, uvloop and OpenSSL it runs on, and the git commit it was built from. The
commit and Cython version come from ``_build_info.py``, which setup.py writes into sdists and
wheels; a source checkout without it asks git.
"""

from __future__ import annotations

import os
import platform
import subprocess

from fastmqtt import IMPLEMENTATION, __version__

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _recorded() -> dict[str, str]:
    try:
        from fastmqtt import _build_info  # type: ignore[attr-defined]
    except ImportError:
        return {}
    return {k: v for k, v in vars(_build_info).items() if k in ("COMMIT", "CYTHON") and v}


def git_commit(directory: str = PACKAGE_DIR) -> str | None:
    """The short commit of the checkout ``directory`` is in (with "+dirty" for local changes),
    or None outside one or without git."""
    try:
        commit = subprocess.run(
            ["git", "-C", directory, "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", directory, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def version_text() -> str:
    import ssl

    import uvloop

    recorded = _recorded()
    commit = recorded.get("COMMIT") or git_commit()
    build = "compiled Cython modules" if IMPLEMENTATION == "cython" else "plain Python"
    if IMPLEMENTATION == "cython" and "CYTHON" in recorded:
        build += f" (Cython {recorded['CYTHON']})"
    return (
        f"fastmqtt {__version__} ({IMPLEMENTATION}): the MQTT-aware load balancer "
        "(not the PyPI asyncio client of the same name)\n"
        f"build: {build}, commit {commit or 'unknown'}\n"
        f"runtime: {platform.python_implementation()} {platform.python_version()}, "
        f"uvloop {uvloop.__version__}, {ssl.OPENSSL_VERSION}\n"
    )
