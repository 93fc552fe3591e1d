"""The one place that decides between compiled modules and their plain-Python twins."""

import os
import sys

NO_EXTENSIONS: bool = (
    os.environ.get("FASTMQTT_NO_EXTENSIONS", "") not in ("", "0")
    or sys.implementation.name != "cpython"
)
IMPLEMENTATION: str = "python" if NO_EXTENSIONS else "cython"
