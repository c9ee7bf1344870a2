"""Which bundle an embedded store was last bound to, in a small file beside it: read without importing Chroma
(0.4-0.8 s), so `kger search` can open that bundle while Chroma loads. Only a hint: the collection decides."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from store.paths import stores_dir

HINT_FILE = "bundle.json"


def bundle_hint(name: str, home: Path | None = None) -> str | None:
    """The bundle path store `name` under `home` was last seen bound to, or None."""
    return hint_at(stores_dir(home) / name)


def hint_at(root: Path) -> str | None:
    try:
        return str(json.loads((root / HINT_FILE).read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_hint(root: Path, path: str, fingerprint: str) -> None:
    """Write the hint when it is missing or stale; best effort (a read-only home has none)."""
    if hint_at(root) == path:
        return
    tmp = root / f".{HINT_FILE}.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps({"path": path, "fingerprint": fingerprint}), encoding="utf-8")
        os.replace(tmp, root / HINT_FILE)
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
