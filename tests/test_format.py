"""The code is formatted by ruff (config in pyproject.toml), so CI's one test command checks it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_python_files_are_ruff_formatted() -> None:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    paths = files.stdout.split() or ["capcli", "export", "tests", "benchmarks"]  # no git: the folders
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, f"run `ruff format` and commit:\n{done.stdout}{done.stderr}"
