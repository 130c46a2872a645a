"""Every command and snippet in the README runs, in order, in a fresh folder.

The one substitution: `bounds demo` runs as `bounds demo --quick`, which goes through the
same code with fewer examples and narrower models (its widths include 32, which the later
commands use). The install block and the test command itself are not re-run. Blocks marked
`sh` (torchrun launches, commands that need a trained language model, a teacher or a user's
module) are exercised by tests/test_distributed.py, tests/test_cli_lm.py,
tests/test_cli_requential.py and tests/test_sweep.py instead.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIPPED = ("pip install", "python3 -m venv", "python -m pytest")


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced code block, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.DOTALL)


def readme_commands() -> list[str]:
    commands = []
    for language, text in readme_blocks():
        if language != "bash":
            continue
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith(SKIPPED):
                commands.append(line)
    return commands


def test_readme_lists_the_two_quickstart_commands():
    quickstart = README.read_text().split("## Quickstart")[1].split("##")[0]
    assert re.findall(r"```bash\n(.*?)```", quickstart, flags=re.DOTALL) == [
        "bounds demo\npython -m pytest -q\n"
    ]


@pytest.mark.slow
def test_every_readme_command_and_snippet_runs(tmp_path):
    commands = readme_commands()
    assert commands[0] == "bounds demo"
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "bounds", command
        if argv[1] == "demo":
            argv.append("--quick")
        result = subprocess.run(
            [sys.executable, "-m", "cli", *argv[1:], *(["-q"] if _quiet(argv) else [])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "bounds-demo" / "bounds.png").stat().st_size > 0
    assert (tmp_path / "sweep.png").stat().st_size > 0
    for language, text in readme_blocks():
        if language == "python":
            result = subprocess.run(
                [sys.executable, "-c", text], cwd=tmp_path, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{text}\n{result.stderr}"


def _quiet(argv: list[str]) -> bool:
    return argv[1] in ("demo", "compute", "verify", "sweep")
