"""Opening a store together with the bundle that indexed it: one sequence for the CLI, the Assistant and serve."""
from __future__ import annotations

from typing import Optional


def prefetch_bundle(store: str = "default", url: Optional[str] = None) -> None:
    """Start opening the store's bundle in a thread (retrieval.encoder.prefetch), before the slow imports.

    An embedded store names its bundle in a file readable before Chroma is imported, so a one-shot
    `kger search` pays Chroma's import (and `kger ask` LangGraph's) side by side with loading the text
    graph, not one after the other (bench/cold_start.py). A server store has no such file: nothing starts."""
    from retrieval.encoder import prefetch
    from store.hint import bundle_hint

    if url is None and (hint := bundle_hint(store)) is not None:
        prefetch(hint)


def open_searcher(store: str = "default", url: Optional[str] = None):
    """The store's Searcher, with the bundle that indexed it."""
    from retrieval.search import Searcher
    from store.gallery import Gallery

    prefetch_bundle(store, url)
    return Searcher.for_gallery(Gallery.open(store, url=url))
