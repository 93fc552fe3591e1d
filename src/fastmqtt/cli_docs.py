"""Shell completion (bash, zsh) and the man page, generated from the argparse parser.

setup.py runs ``python -m fastmqtt.cli_docs DIR`` at build time (sdist and wheel), so the files
in ``fastmqtt/share/`` always describe the commands of that build; tests/test_sdist.py checks
they are shipped and match the parser.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from fastmqtt import __version__
from fastmqtt.cli import build_parser

FILES = {"bash": "fastmqtt.bash", "zsh": "_fastmqtt", "man": "fastmqtt.1"}


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """What may follow a command: its long options and its own subcommands."""
    return sorted(_commands(parser)) + _options(parser)


def bash(parser: argparse.ArgumentParser) -> str:
    cases = "".join(
        f'        {name}) words="{" ".join(_words(sub))}" ;;\n'
        for name, sub in _commands(parser).items()
    )
    top = " ".join(_words(parser))
    return (
        "# bash completion for fastmqtt (generated from its argparse parser)\n"
        "_fastmqtt() {\n"
        '    local cur="${COMP_WORDS[COMP_CWORD]}" words\n'
        '    if [ "$COMP_CWORD" -eq 1 ]; then\n'
        f'        words="{top}"\n'
        "    else\n"
        '        case "${COMP_WORDS[1]}" in\n'
        f"{cases}"
        "        *) words= ;;\n"
        "        esac\n"
        "    fi\n"
        '    COMPREPLY=($(compgen -W "$words" -- "$cur"))\n'
        '    [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- "$cur"))\n'
        "}\n"
        "complete -F _fastmqtt fastmqtt\n"
    )


def _zsh_quote(text: str) -> str:
    return text.replace("'", "'\\''").replace(":", "\\:")


def zsh(parser: argparse.ArgumentParser) -> str:
    commands = " ".join(
        f"'{name}:{_zsh_quote(sub.description or '')}'" for name, sub in _commands(parser).items()
    )
    cases = "".join(
        f"        {name}) compadd -- {' '.join(_words(sub))}; _files ;;\n"
        for name, sub in _commands(parser).items()
    )
    return (
        "#compdef fastmqtt\n"
        "# zsh completion for fastmqtt (generated from its argparse parser)\n"
        "_fastmqtt() {\n"
        "    if (( CURRENT == 2 )); then\n"
        f"        local -a commands; commands=({commands})\n"
        "        _describe command commands; compadd -- --version --help\n"
        "        return\n"
        "    fi\n"
        "    case $words[2] in\n"
        f"{cases}"
        "    esac\n"
        "}\n"
        '_fastmqtt "$@"\n'
    )


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-").replace("\n.", "\n\\&.")


def man(parser: argparse.ArgumentParser) -> str:
    lines = [
        f'.TH FASTMQTT 1 "" "fastmqtt {__version__}" "User Commands"',
        ".SH NAME",
        "fastmqtt \\- MQTT\\-aware load balancer for broker clusters",
        ".SH SYNOPSIS",
        ".B fastmqtt",
        "[\\-\\-version] [\\-h] COMMAND ...",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        ".SH COMMANDS",
    ]
    for name, sub in _commands(parser).items():
        lines += [
            ".SS " + _roff(f"fastmqtt {name}"),
            ".nf",
            _roff(sub.format_help().rstrip()),
            ".fi",
        ]
    lines += [
        ".SH FILES",
        "lb.toml: the configuration; docs/config.md in the sources lists every key.",
        ".SH SEE ALSO",
        ".BR haproxy (1),",
        ".BR mosquitto (8)",
    ]
    return "\n".join(lines) + "\n"


def generate() -> dict[str, str]:
    """File name -> text, for the full parser (every command's own arguments), laid out for
    80 columns whatever the terminal."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"  # argparse's help formatter reads it
    try:
        parser = build_parser(full=True)
        return _render(parser)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def _render(parser: argparse.ArgumentParser) -> dict[str, str]:
    renders = {"bash": bash, "zsh": zsh, "man": man}
    return {FILES[kind]: render(parser) for kind, render in renders.items()}


def main(argv: list[str]) -> int:
    (directory,) = argv
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
