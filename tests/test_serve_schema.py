"""schemathesis (`--checks all`) against a running `kger serve` over the 70 real images: every response must
match the OpenAPI description the server publishes (statuses, bodies, content types), every schema-valid
request must be accepted and every schema-invalid one refused (issue 20 §3). Bounded: a few examples per
operation and a time budget, so the run stays near a minute."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_serve import KGER, ROOT, _env

TOKEN = "schemathesis-token-0123456789abc"  # 32 characters, as `kger serve` wants of a token
CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"

pytestmark = pytest.mark.slow


@pytest.fixture
def served(chat_gallery, tmp_path):
    """`kger serve --port 0` with a token; yields its base URL."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(KGER + ["serve", "--port", "0"], cwd=ROOT,
                                env=_env(chat_gallery, KGER_SERVE_TOKEN=TOKEN), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (m := re.search(r"(http://127\.0\.0\.1:\d+)", log_path.read_text())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"kger serve did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield m.group(1), log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_schemathesis_all_checks_find_nothing(served, tmp_path):
    url, log_path = served
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
         "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "8", "--max-time", "60",
         "--workers", "2", "--request-timeout", "60", "--no-color", "--seed", "20"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", out)
    assert summary and int(summary.group(1)) >= 100, out[-3000:]  # it really exercised the API
    print(summary.group(0))
    assert "Traceback" not in log_path.read_text()
