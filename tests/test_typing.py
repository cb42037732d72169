"""The package type-checks cleanly (it ships a py.typed marker): mypy with pyproject's
[tool.mypy] configuration, run from the repository root."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_mypy_reports_no_errors():
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "symkern"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"mypy exited with {proc.returncode}:\n{tail}"
