"""CI runs the README's test command, character for character."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run the tests") :]
    (command,) = re.findall(r"```sh\n(.+?)\n```", section, re.S)[:1]
    assert "\n" not in command and command.endswith(" && tools/test")
    runs = (ROOT / "tools" / "test").read_text()
    assert runs.count("FASTMQTT_NO_EXTENSIONS=1 python -m pytest") == 2  # both implementations
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
