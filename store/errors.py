"""The store's user-facing errors (re-exported by store.gallery, where callers import them)."""
from __future__ import annotations

from retrieval.errors import KgerError

INDEX_HINT = "kger index IMAGES --bundle DIR --store {name}"


class StoreError(KgerError):
    """A user-facing failure; the message is one line and names the next command to run."""


class BundleMismatchError(StoreError):
    """The store was indexed by another bundle than the one in use: its scores would be meaningless."""
