"""Image labels from the files users already have: ENTRep `cls.json` or a CSV."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from retrieval.errors import InputError


class LabelsError(InputError):
    """A labels file kger cannot read; the message names the file and what is wrong."""


def read_labels(path: str | Path) -> dict[str, str]:
    """Map image file name (basename) -> class.

    Accepts `cls.json` ({"img.png": "ear-left"}) and CSV with a header naming an image column
    (image / file / image_path / path) and a label column (label / class / cls / folder_class).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise LabelsError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise LabelsError(f"{path} must map image names to class names, like ENTRep's cls.json")
        return {Path(k).name: v for k, v in data.items()}
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return {}
        cols = {c.lower().strip(): c for c in rows[0] if c}
        img = next((cols[c] for c in ("image", "file", "image_path", "path", "filename") if c in cols), None)
        lab = next((cols[c] for c in ("label", "class", "cls", "folder_class", "cls_json") if c in cols), None)
        if not img or not lab:
            raise LabelsError(f"{path} needs an image column and a label column (found: {', '.join(cols)})")
        return {Path(r[img].replace("\\", "/")).name: r[lab] for r in rows if r.get(img) and r.get(lab)}
    raise LabelsError(f"labels must be a .json (cls.json) or .csv file, not {path.suffix or 'no suffix'}")
