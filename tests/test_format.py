"""The code is formatted and linted by ruff (config in pyproject.toml), so CI's one test command checks both."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_files() -> list[str]:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return files.stdout.split() or ["capcli", "export", "tests", "benchmarks"]  # no git: the folders


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *python_files()], cwd=ROOT, capture_output=True, text=True
    )


def test_python_files_are_ruff_formatted() -> None:
    done = ruff("format", "--check")
    assert done.returncode == 0, f"run `ruff format` and commit:\n{done.stdout}{done.stderr}"


def test_python_files_pass_ruff_check() -> None:
    done = ruff("check", "--no-cache")
    assert done.returncode == 0, f"fix what `ruff check` finds and commit:\n{done.stdout}{done.stderr}"
