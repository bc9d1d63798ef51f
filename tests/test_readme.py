"""The README's set-up commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_gives_exactly_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert all("-c constraints.txt" in command for command in commands)


def test_ci_runs_the_readme_test_command():
    test_command = _readme_commands()[1]
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_constraints_pin_the_cpu_torch_build():
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins
