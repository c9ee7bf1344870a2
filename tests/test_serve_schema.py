"""schemathesis (`--checks all`) against a running `kger serve` over the 70 real images: every response must
match the OpenAPI description the server publishes (statuses, bodies, content types), every schema-valid
request must be accepted and every schema-invalid one refused (issue 20 §3). Bounded: a few examples per
operation and a time budget, so the run stays near a minute. One worker: schemathesis' threads parse lambdas
with `ast` concurrently, which CPython 3.11.7 can fail ("AST constructor recursion depth mismatch")."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import TOKEN, server  # noqa: F401  (the running `kger serve` with a token, as a fixture)

CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"

pytestmark = pytest.mark.slow


def test_schemathesis_all_checks_find_nothing(server, tmp_path):
    url, _ = server
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
         "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "8", "--max-time", "60",
         "--workers", "1", "--request-timeout", "60", "--no-color", "--seed", "20"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", out)
    assert summary and int(summary.group(1)) >= 100, out[-3000:]  # it really exercised the API
    print(summary.group(0))
