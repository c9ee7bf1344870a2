"""Query files for `kger batch` and ground-truth files for `kger eval`, in the formats users already have.

Queries: `.txt` (one a line), `.csv` (a `query`/`text` column, or ENTRep's header-less Track 3 `t2i.csv`),
`.jsonl` (`{"query": ...}` a line) and `.json` (ENTRep `t2i.json`, whose keys are the descriptions, or a list).
Ground truth: ENTRep `t2i.json` ({description: image}), CSV (`query,image` / `query,class`, with or without a
header; ENTRep's `train.csv` is `image_path,text`), JSON lists and JSONL. A target that names an ENTRep class
makes a class-level query (every image of that class is relevant); anything else is an image file name.

A bad entry never stops a run of hundreds of queries: it is reported with its line number and skipped.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Iterator, Optional

from agent.core.render import plural
from retrieval.errors import InputError
from retrieval.lexicon import CLASSES, SITES

MAX_QUERY_CHARS = 2000  # a description longer than this is a pasted document, not a query
QUERY_COLUMNS = ("query", "text", "description", "caption")
TARGET_COLUMNS = ("image", "images", "image_path", "image_name", "file", "filename", "path", "class", "label", "cls")
QUERY_SUFFIXES = (".txt", ".csv", ".jsonl", ".json")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BAD_BYTE = re.compile(r"[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8
_SPLIT_TARGETS = re.compile(r"\s*[;|]\s*")
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 first: its BOM starts like UTF-16's
DELIMITERS = ",;\t|"


@dataclass(frozen=True)
class Query:
    text: str
    line: int  # 1-based line in the file; for a JSON document, the entry's position


@dataclass(frozen=True)
class Skipped:
    line: int
    reason: str


@dataclass(frozen=True)
class Truth:
    """What is relevant to one query: named image files, ENTRep classes, or both."""

    query: str
    line: int
    images: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()


@dataclass
class Parsed:
    """A file's usable entries, its skipped ones, and whether positions are lines or JSON entries."""

    items: list = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unit: str = "line"


def _read_text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 survive as surrogates so only their line is rejected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    data = path.read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            if encoding == "utf-8":
                return data[len(bom):].decode("utf-8", errors="surrogateescape")
            try:
                return data.decode(encoding)  # these codecs read the byte order from the BOM, and drop it
            except UnicodeDecodeError as e:
                raise InputError(f"{path} starts like {encoding.upper()} but is not valid {encoding.upper()} "
                                 f"(byte {e.start}): save it as UTF-8") from None
    if b"\x00" in data[:4096]:
        raise InputError(f"{path} holds NUL bytes: UTF-16 without a byte-order mark, or not text; save it as UTF-8")
    return data.decode("utf-8", errors="surrogateescape")


def check_query(text: Any) -> tuple[Optional[str], Optional[str]]:
    """(clean query, None) or (None, why it cannot be a query)."""
    if not isinstance(text, str):
        return None, f"the query is a {type(text).__name__}, not text"
    if _BAD_BYTE.search(text):
        return None, "not valid UTF-8"
    text = text.strip()
    if not text:
        return None, "empty query"
    if _CONTROL.search(text):
        return None, "contains control characters"
    if len(text) > MAX_QUERY_CHARS:
        return None, f"longer than {MAX_QUERY_CHARS} characters ({len(text)})"
    return text, None


def _csv_rows(text: str, where: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line number where the row starts, cells) for every non-blank row."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield start, row
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"{where} is not a readable CSV file (line {reader.line_num}: {e})") from None


def _delimiter(text: str, *columns: tuple[str, ...], sniff: bool) -> str:
    """The CSV delimiter: the one that makes the first line a header naming one of `columns`; else, with
    `sniff`, what csv.Sniffer finds among , ; tab | in the first lines; else a comma."""
    first = next((ln for ln in _lines(text) if ln.strip()), "")
    for d in DELIMITERS:
        cells = next(csv.reader([first], delimiter=d), [])
        if any(_header_index(cells, names) is not None for names in columns):
            return d
    if sniff:
        try:
            return csv.Sniffer().sniff("\n".join(_lines(text)[:20]), delimiters=DELIMITERS).delimiter
        except csv.Error:
            pass
    return ","


def _looks_like_target(value: str) -> bool:
    """An image file name or an ENTRep class: what the second column of a header-less ground truth holds."""
    from retrieval.preprocess import IMAGE_SUFFIXES

    return class_name(value) is not None or PureWindowsPath(value.strip()).suffix.lower() in IMAGE_SUFFIXES


def _header_index(cells: list[str], names: tuple[str, ...]) -> Optional[int]:
    low = [c.strip().lower() for c in cells]
    return next((low.index(n) for n in names if n in low), None)


def _json_document(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def _lines(text: str) -> list[str]:
    """Lines split on newlines only (str.splitlines also splits on form feeds and the like, shifting numbers)."""
    return [line.rstrip("\r") for line in text.split("\n")]


def _jsonl_objects(text: str) -> Iterator[tuple[int, Any, Optional[str]]]:
    """(line number, parsed value or None, error) for every non-blank line."""
    for n, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line), None
        except json.JSONDecodeError as e:
            yield n, None, f"not valid JSON ({e.msg})"


def _field(obj: Any, names: tuple[str, ...]) -> Any:
    if isinstance(obj, dict):
        return next((obj[n] for n in names if n in obj), None)
    return None


# -- queries ---------------------------------------------------------------------------------------------

def _raw_queries(path: Path, text: str) -> Parsed:
    """(line, raw value or None, error) before validation, per format."""
    suffix = path.suffix.lower()
    raw: list[tuple[int, Any, Optional[str]]] = []
    unit = "line"
    if suffix == ".txt":
        raw = [(n, line, None) for n, line in enumerate(_lines(text), start=1) if line.strip()]
    elif suffix == ".csv":
        rows = list(_csv_rows(text, path, _delimiter(text, QUERY_COLUMNS, sniff=False)))
        if rows:
            first_line, first = rows[0]
            col = _header_index(first, QUERY_COLUMNS)
            if col is not None:  # a header naming the query column
                width = len(first)
                for n, row in rows[1:]:
                    if len(row) != width:
                        raw.append((n, None, f"has {len(row)} fields, the header has {width}"))
                    else:
                        raw.append((n, row[col], None))
            else:  # header-less, like ENTRep's t2i.csv: the query is the first column
                width = len(first)
                for n, row in rows:
                    if width == 1 and len(row) > 1:
                        raw.append((n, None, f"has {len(row)} fields; quote a description that holds a comma"))
                    else:
                        raw.append((n, row[0], None))
    elif suffix == ".jsonl":
        for n, obj, err in _jsonl_objects(text):
            value = obj if isinstance(obj, str) else _field(obj, QUERY_COLUMNS)
            if err is None and value is None:
                err = "no 'query' field"
            raw.append((n, value, err))
    elif suffix == ".json":
        doc = _json_document(text, path)
        unit = "entry"
        if isinstance(doc, dict):  # ENTRep t2i.json: description -> image; the keys are the queries
            raw = [(n, key, None) for n, key in enumerate(doc, start=1)]
        elif isinstance(doc, list):
            for n, item in enumerate(doc, start=1):
                value = item if isinstance(item, str) else _field(item, QUERY_COLUMNS)
                raw.append((n, value, None if value is not None else "no 'query' field"))
        else:
            raise InputError(f"{path} must hold an object (description -> image, like t2i.json) or a list of queries")
    else:
        raise InputError(f"cannot read queries from {path.name}: use a {', '.join(QUERY_SUFFIXES)} file")
    return Parsed(items=raw, unit=unit)


def _checked(path: Path, raw: Callable[[Path, str], Parsed]) -> tuple[Parsed, list[tuple]]:
    """The file's raw entries (`raw`: one reader per file kind) with each query checked: the result to fill,
    its unusable entries already in `skipped`, and the usable ones as (line, query, *the rest of the entry)."""
    parsed = raw(path, _read_text(path))
    out, usable = Parsed(unit=parsed.unit), []
    for n, value, *rest, err in parsed.items:
        text, why = (None, err) if err else check_query(value)
        if text is None:
            out.skipped.append(Skipped(n, why or "unreadable"))
        else:
            usable.append((n, text, *rest))
    return out, usable


def read_queries(path: str | Path) -> Parsed:
    """Queries in file order; empty, malformed and repeated entries go to `skipped` with the reason."""
    path = Path(path)
    out, usable = _checked(path, _raw_queries)
    first_seen: dict[str, int] = {}
    for n, text in usable:
        if text in first_seen:
            out.skipped.append(Skipped(n, f"duplicate of {out.unit} {first_seen[text]}"))
        else:
            first_seen[text] = n
            out.items.append(Query(text, n))
    out.skipped.sort(key=lambda s: s.line)  # in file order, whichever check skipped them
    return _usable(out, path, "query")


# -- ground truth ----------------------------------------------------------------------------------------

def class_name(value: str) -> Optional[str]:
    """The ENTRep class ('ear-left', 'Ear_Left', 'ear left') or region ('ear', 'Larynx') a value names, or None.

    A region is region-level truth: every image of a class in that region is relevant."""
    norm = re.sub(r"[\s_]+", "-", value.strip().lower())
    return norm if norm in CLASSES or norm in SITES else None


def image_name(value: str) -> str:
    """The file name in a path of either OS ('./data/train/train/imgs\\x.png' -> 'x.png')."""
    return PureWindowsPath(value.strip()).name


def split_targets(value: Any) -> tuple[tuple[str, ...], tuple[str, ...], Optional[str]]:
    """(image names, classes, error) from a string ('a.png; b.png'), a list of strings, or a bad value."""
    if isinstance(value, str):
        parts = [p for p in _SPLIT_TARGETS.split(value.strip()) if p]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = [p.strip() for p in value if p.strip()]
    else:
        return (), (), "the target must be an image name, a class name or a list of them"
    if not parts:
        return (), (), "no relevant image or class given"
    images, classes = [], []
    for p in parts:
        cls = class_name(p)
        if cls:
            classes.append(cls)
        else:
            images.append(image_name(p))
    return tuple(dict.fromkeys(images)), tuple(dict.fromkeys(classes)), None


def _raw_truth(path: Path, text: str) -> Parsed:
    suffix = path.suffix.lower()
    raw: list[tuple[int, Any, Any, Optional[str]]] = []  # (line, query, target, error)
    unit = "line"
    if suffix == ".csv":
        rows = list(_csv_rows(text, path, _delimiter(text, QUERY_COLUMNS, TARGET_COLUMNS, sniff=True)))
        if rows:
            _, first = rows[0]
            q_col, t_col = _header_index(first, QUERY_COLUMNS), _header_index(first, TARGET_COLUMNS)
            if q_col is not None or t_col is not None:
                if q_col is None or t_col is None:
                    raise InputError(f"{path} needs a query column ({'/'.join(QUERY_COLUMNS)}) and an image or "
                                     f"class column ({'/'.join(TARGET_COLUMNS)})")
                body = rows[1:]
            elif len(first) >= 2 and not _looks_like_target(first[1]):  # a header, but not one we know
                raise InputError(f"{path}: the first row ({', '.join(first)[:80]}) is neither a header naming a query "
                                 f"column ({'/'.join(QUERY_COLUMNS)}) and an image or class column "
                                 f"({'/'.join(TARGET_COLUMNS)}) nor a query and an image name or class")
            else:  # header-less: query, target
                q_col, t_col, body = 0, 1, rows
            need = max(q_col, t_col) + 1
            for n, row in body:
                if len(row) < need:
                    raw.append((n, None, None, f"has {len(row)} fields, needs a query and an image or class"))
                else:
                    raw.append((n, row[q_col], row[t_col], None))
    elif suffix in (".json", ".jsonl"):
        if suffix == ".json":
            doc = _json_document(text, path)
            unit = "entry"
            if isinstance(doc, dict):  # t2i.json: description -> image (or class, or a list)
                items = [(n, q, t, None) for n, (q, t) in enumerate(doc.items(), start=1)]
            elif isinstance(doc, list):
                items = [(n, _field(o, QUERY_COLUMNS), _field(o, TARGET_COLUMNS), None) for n, o in enumerate(doc, start=1)]
            else:
                raise InputError(f"{path} must map descriptions to images or classes, like ENTRep's t2i.json")
        else:
            items = [(n, _field(o, QUERY_COLUMNS), _field(o, TARGET_COLUMNS), err) for n, o, err in _jsonl_objects(text)]
        for n, q, t, err in items:
            if err is None and (q is None or t is None):
                err = "needs a query and an image or class"
            raw.append((n, q, t, err))
    else:
        raise InputError(f"cannot read ground truth from {path.name}: use a .json (t2i.json), .jsonl or .csv file")
    return Parsed(items=raw, unit=unit)


def read_ground_truth(path: str | Path) -> Parsed:
    """One `Truth` per distinct query (repeated queries pool their targets); bad entries in `skipped`."""
    path = Path(path)
    out, usable = _checked(path, _raw_truth)
    merged: dict[str, Truth] = {}
    for n, query, target in usable:
        images, classes, why = split_targets(target)
        if why:
            out.skipped.append(Skipped(n, why))
            continue
        old = merged.get(query)
        if old is None:
            merged[query] = Truth(query, n, images, classes)
        else:
            merged[query] = Truth(query, old.line, tuple(dict.fromkeys(old.images + images)),
                                  tuple(dict.fromkeys(old.classes + classes)))
    out.items = list(merged.values())
    out.skipped.sort(key=lambda s: s.line)  # in file order, whichever check skipped them
    return _usable(out, path, "ground-truth entry")


def _usable(parsed: Parsed, path: Path, what: str) -> Parsed:
    """A file without a single usable entry is an error, not an empty run that looks like success."""
    if parsed.items:
        return parsed
    if not parsed.skipped:
        raise InputError(f"{path} holds no {what}: it is empty or blank")
    first = parsed.skipped[0]
    n = len(parsed.skipped)
    raise InputError(f"{path} holds no usable {what}: {plural(n, 'bad ' + parsed.unit)} "
                     f"({parsed.unit} {first.line}: {first.reason}{', ...' if n > 1 else ''})")
