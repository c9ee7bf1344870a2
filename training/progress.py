"""A training run's resume bookkeeping: which folds of which run are finished in an output folder, so a rerun
with the same settings continues after the last finished fold and a rerun with others is refused."""
from __future__ import annotations

import json
from pathlib import Path

from retrieval.manifest import MANIFEST, fold_file
from training.config import TrainError

PROGRESS = "train_progress.json"


def resume_state(out: Path, key: str) -> dict[int, dict] | None:
    """Finished folds of this run in `out` ({} for a fresh start); None when the run is already complete."""
    progress = out / PROGRESS
    if progress.is_file():
        state = json.loads(progress.read_text())
        if state.get("run_key") != key:
            raise TrainError(f"{out} holds an unfinished training run with other settings or data; "
                             "rerun with the same settings to resume, or choose another --out")
        return {int(f): m for f, m in state.get("done", {}).items() if (out / fold_file(int(f))).is_file()}
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text())
        train = manifest.get("train") or {}
        if train.get("run_key") == key and not manifest.get("partial"):
            return None
        raise TrainError(f"{out} already holds a bundle; choose another --out or delete it first")
    return {}


def write_progress(out: Path, key: str, k: int, done: dict[int, dict]) -> None:
    tmp = out / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps({"run_key": key, "folds": k, "done": {str(f): m for f, m in done.items()}}, indent=1))
    tmp.replace(out / PROGRESS)
