"""Training data from the layouts users have: ENTRep (imgs/ + cls.json and/or t2i.json), one folder per class,
or a CSV (image,text[,label]).

Every item is one image file with its class (or None) and its captions: the descriptions that name it (t2i.json,
CSV text) followed by the lexicon's class captions, so a class-only dataset still trains the text tower on
several phrasings per class. An image may have several descriptions and a description several images.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from retrieval import captions, lexicon
from retrieval.errors import InputError
from retrieval.manifest import file_sha256
from retrieval.preprocess import IMAGE_SUFFIXES, ImageLoadError, load_image

log = logging.getLogger("kger.train")

_IMAGE_COLS = ("image", "image_path", "path", "file", "filename")
_TEXT_COLS = ("text", "caption", "description", "query")
_LABEL_COLS = ("label", "class", "cls", "folder_class")


class DataError(InputError):
    """The data folder or file cannot be read as training data; the message says what was expected."""


@dataclass(frozen=True)
class Item:
    path: Path
    sha: str  # content id (file sha256): duplicates under two names are one image
    label: str | None
    descriptions: tuple[str, ...]  # free-text descriptions naming this image (t2i.json, CSV); they group folds
    captions: tuple[str, ...]  # descriptions + class captions: every text that is a positive for this image

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Dataset:
    root: Path
    layout: str  # "entrep" | "folders" | "csv"
    items: list[Item]
    classes: list[str]  # classifier order: the lexicon's ENTRep classes when every label is one of them
    data_hash: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, same bytes as path): one image

    def summary(self) -> str:
        """'69 images (entrep: ear-left 10, ...); 0 skipped, 1 duplicate file': every file given accounted
        for, as `kger index` does (a byte-identical pair is one image)."""
        counts = ", ".join(f"{c} {n}" for c, n in self.class_counts().items() if n)
        dups = len(self.duplicates)
        return (f"{len(self.items)} images ({self.layout}: {counts}); {len(self.skipped)} skipped, "
                f"{dups} duplicate file{'' if dups == 1 else 's'}")

    def class_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for it in self.items:
            if it.label is not None:
                counts[it.label] = counts.get(it.label, 0) + 1
        return counts


def class_templates(label: str | None) -> list[str]:
    """Several phrasings per class from the lexicon; a label outside ENTRep reads as itself."""
    if label is None:
        return []
    if label in lexicon.CLASSES:
        return captions.class_captions(label)
    return [lexicon.class_description(label)]


def data_hash(items: Iterable[Item]) -> str:
    """sha256 over the sorted (file sha, label, captions): names and order do not matter, content does."""
    rows = sorted([it.sha, it.label or "", list(it.captions)] for it in items)
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def load_dataset(path: str | Path, *, check_images: bool = True, templates: bool = True) -> Dataset:
    """Read any supported layout; unreadable images are skipped with a warning, never fatal."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        layout, root, raw = "csv", path.parent, _read_csv(path)
    elif path.is_dir() and (path / "imgs").is_dir() and any((path / f).is_file() for f in ("cls.json", "t2i.json")):
        layout, root, raw = "entrep", path, _read_entrep(path)
    elif path.is_dir() and _class_dirs(path):
        layout, root, raw = "folders", path, _read_folders(path)
    elif path.exists():
        raise DataError(
            f"{path} is not training data: expected an ENTRep folder (imgs/ + cls.json and/or t2i.json), "
            "a folder with one sub-folder of images per class, or a CSV with columns image,text[,label]"
        )
    else:
        raise DataError(f"no such training data: {path}")

    skipped: list[tuple[str, str]] = []
    present = []
    for p, label, descs in raw:
        if not p.is_file():
            skipped.append((str(p), "file not found"))
        else:
            present.append((p, label, descs))
    if check_images:
        with ThreadPoolExecutor(max_workers=4) as pool:
            problems = list(pool.map(_image_problem, [p for p, _, _ in present]))
    else:
        problems = [None] * len(present)
    merged: dict[str, dict] = {}
    duplicates: list[tuple[str, str]] = []
    for (p, label, descs), problem in zip(present, problems):
        if problem:
            skipped.append((str(p), problem))
            continue
        sha = file_sha256(p)
        if sha in merged:
            duplicates.append((str(p), str(merged[sha]["path"])))
        m = merged.setdefault(sha, {"path": p, "labels": [], "descs": []})
        m["labels"].append(label)
        m["descs"].extend(descs)
    for p, reason in skipped:
        log.warning("skipping %s: %s", p, reason)

    items = []
    for sha, m in merged.items():
        labels = {lab for lab in m["labels"] if lab}
        if len(labels) > 1:
            log.warning("skipping %s: one image with conflicting labels %s", m["path"], sorted(labels))
            skipped.append((str(m["path"]), f"conflicting labels {sorted(labels)}"))
            continue
        label = labels.pop() if labels else None
        descs = tuple(dict.fromkeys(d.strip() for d in m["descs"] if d and d.strip()))
        caps = tuple(dict.fromkeys(descs + tuple(class_templates(label) if templates else ())))
        if not caps:
            skipped.append((str(m["path"]), "no label and no description"))
            log.warning("skipping %s: no label and no description", m["path"])
            continue
        items.append(Item(m["path"], sha, label, descs, caps))
    items.sort(key=lambda it: (str(it.path), it.sha))
    if not items:
        raise DataError(f"no usable training images in {path}")
    labels = {it.label for it in items if it.label}
    classes = list(lexicon.CLASSES) if labels <= set(lexicon.CLASSES) else sorted(labels)
    return Dataset(root, layout, items, classes, data_hash(items), skipped, duplicates)


def _image_problem(path: Path) -> str | None:
    try:
        load_image(path)
    except ImageLoadError as e:
        return e.reason
    return None


# ------------------------------------------------------------------------------------------------ layouts
Raw = list[tuple[Path, "str | None", list[str]]]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} must be a JSON object")
    return data


def _read_entrep(root: Path) -> Raw:
    imgs = root / "imgs"
    labels: dict[str, str] = {}
    descs: dict[str, list[str]] = {}
    if (root / "cls.json").is_file():
        data = _read_json(root / "cls.json")
        if not all(isinstance(v, str) for v in data.values()):
            raise DataError(f"{root / 'cls.json'} must map image names to class names")
        labels = {_basename(k): v for k, v in data.items()}
    if (root / "t2i.json").is_file():
        for text, target in _read_json(root / "t2i.json").items():
            for name in [target] if isinstance(target, str) else list(target or []):
                descs.setdefault(_basename(str(name)), []).append(text)
    names = sorted(set(labels) | set(descs))
    unused = sum(1 for p in imgs.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in labels
                 and p.name not in descs)
    if unused:
        log.warning("%d images in %s are in neither cls.json nor t2i.json and are left out", unused, imgs)
    return [(imgs / n, labels.get(n), descs.get(n, [])) for n in names]


def _class_dirs(root: Path) -> list[Path]:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())]


def _read_folders(root: Path) -> Raw:
    return [(p, d.name, []) for d in _class_dirs(root) for p in sorted(d.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]


def _basename(name: str) -> str:
    return Path(name.replace("\\", "/")).name


def _read_csv(path: Path) -> Raw:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path} is empty")
    head = [c.strip().lower() for c in rows[0]]
    if any(c in _IMAGE_COLS for c in head):
        col = {c: i for i, c in enumerate(head)}
        img = next(col[c] for c in _IMAGE_COLS if c in col)
        txt = next((col[c] for c in _TEXT_COLS if c in col), None)
        lab = next((col[c] for c in _LABEL_COLS if c in col), None)
        rows = rows[1:]
    else:  # no header: image,text[,label]
        img, txt, lab = 0, 1, 2
    if txt is None and lab is None:
        raise DataError(f"{path} needs a text column and/or a label column besides the image column")
    out = []
    for r in rows:
        cell = lambda i: r[i].strip() if i is not None and i < len(r) else ""  # noqa: E731
        if not cell(img):
            continue
        out.append((_resolve(path.parent, cell(img)), cell(lab) or None, [cell(txt)] if cell(txt) else []))
    return out


def _resolve(base: Path, name: str) -> Path:
    """CSV paths are relative to the CSV (Windows separators allowed); fall back to base/imgs/NAME, base/NAME."""
    rel = Path(name.replace("\\", "/"))
    for cand in (rel if rel.is_absolute() else base / rel, base / "imgs" / rel.name, base / rel.name):
        if cand.is_file():
            return cand
    return rel if rel.is_absolute() else base / rel
