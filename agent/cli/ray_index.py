"""`kger index --ray`: hand the Ray path picklable ways to load the bundle and open the server store in each actor."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional


def index_on_ray(images: Path, bundle: Path, store: str, url: str, address: Optional[str], workers: int,
                 labels: dict, batch_size: int, hooks: dict):
    """The driver's loaded ensemble is not shipped: each actor loads the bundle from its path (every node must see it)."""
    from retrieval.bundle import load_for_indexing
    from retrieval.ray_index import index_with_ray
    from store.gallery import Gallery

    return index_with_ray(
        images, load_model=partial(load_for_indexing, Path(bundle).resolve()),
        open_store=partial(Gallery.open, store, url=url, write=True),
        labels=labels, batch_size=batch_size, workers=workers, address=address, **hooks,
    )
