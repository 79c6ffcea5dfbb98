"""Lint and format run as `python -m ruff`, from the test extra, and fail when ruff is missing."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_lint_and_format_are_clean():
    lint = _ruff("check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = _ruff("format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
