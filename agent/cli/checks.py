"""The kinds of paths a user gives, checked at the edge: each wrong kind gets its own one-line message.

`Path.exists()` says False for a symbolic link loop and `open()` on a folder says "Is a directory" deep inside
some command, so a wrong kind used to surface as "no such image" or a traceback. These checks name the flag,
the path and what to give instead (InputError: one line, exit 1).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional

from retrieval.errors import InputError


def kind(path: Path) -> Optional[str]:
    """'file', 'folder', 'loop' (a symbolic link loop), 'other' (a pipe, socket or device), or None (absent)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "loop"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    if stat.S_ISREG(mode):
        return "file"
    return "folder" if stat.S_ISDIR(mode) else "other"


_NAMES = {"loop": "a symbolic link loop", "other": "not a regular file (a pipe, socket or device)"}


def home_dir(path: Path, flag: str = "--home") -> Path:
    """A home folder: absent (created when something is written) or a folder."""
    k = kind(path)
    if k == "file":
        raise InputError(f"{flag} {path} is a file, not a folder: give a folder (it is created if missing)")
    if k in _NAMES:
        raise InputError(f"{flag} {path} is {_NAMES[k]}: give a folder")
    return path


def out_file(path: Path, flag: str) -> Path:
    """A file to write: absent or a regular file, in a folder that is (or can be made) a folder."""
    k = kind(path)
    if k == "folder":
        raise InputError(f"{flag} {path} is a folder: give a file name, e.g. {Path(path) / 'results.jsonl'}")
    if k in _NAMES:
        raise InputError(f"{flag} {path} is {_NAMES[k]}: give a regular file name")
    for parent in Path(path).parents:
        pk = kind(parent)
        if pk is None:
            continue
        if pk != "folder":
            raise InputError(f"{flag} {path}: {parent} is {_NAMES.get(pk, 'a file')}, not a folder")
        break
    return path


def image_file(path: Path, flag: str = "--image") -> Path:
    """One existing image file."""
    k = kind(path)
    if k is None:
        raise InputError(f"{flag} {path}: no such image file")
    if k == "folder":
        raise InputError(f"{flag} {path} is a folder: give one image file (index a folder with `kger index`)")
    if k in _NAMES:
        raise InputError(f"{flag} {path} is {_NAMES[k]}: give one image file")
    return path


def images_path(path: Path) -> Path:
    """`kger index IMAGES`: a folder or one image file."""
    k = kind(path)
    if k is None:
        raise InputError(f"no such image folder or file: {path}")
    if k in _NAMES:
        raise InputError(f"{path} is {_NAMES[k]}: give a folder of images or one image file")
    return path
