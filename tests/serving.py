"""Starting `kger serve` for the server tests (tests/test_serve*.py): a real process on a real socket."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KGER = [sys.executable, "-c", "from agent.cli import main; main()"]
TOKEN = "s3cret-token-for-tests"


def serve_env(home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_API_KEY", "KGER_ENCODER", "KGER_SERVE_TOKEN", "KGER_SERVE_ALLOWED_HOSTS")}
    env.update(KGER_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False",
               PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
               **extra)
    return env


@contextlib.contextmanager
def running_serve(args: list[str], env: dict[str, str], log_path: Path, timeout: float = 180):
    """`kger serve ARGS` until its banner names the URL; yields (url, the banner text so far); stops it after."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(KGER + ["serve", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                text=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                text = log_path.read_text()
                m = re.search(r"kger serve: (http://\S+)", text)
                if m and "MCP client configuration" in text:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kger serve did not start: {text[-3000:]}")
                time.sleep(0.2)
            yield m.group(1), text
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
