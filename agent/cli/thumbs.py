"""Small colour thumbnails drawn in the terminal with half blocks, for the chat.

One character cell shows two pixels stacked: '▀' in the top pixel's colour on the bottom pixel's colour,
so a 16x8-cell thumbnail is a 16x16-pixel picture of the circle-cropped endoscopic field. Rich downgrades
the truecolor to 256 or 16 colours where the terminal has fewer; where it has none, or NO_COLOR is set,
callers print no thumbnails (see `can_draw`).
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Optional

from rich.console import Console, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from agent.state import AnswerRow

HALF = "▀"
WIDTH, HEIGHT = 16, 8  # cells per thumbnail (each cell is 1x2 pixels)
GAP = 2  # blank cells between thumbnails


def can_draw(console: Console) -> bool:
    """Thumbnails only make sense on a terminal that shows colour. NO_COLOR (https://no-color.org) leaves
    rich's colour system detected but strips every colour, which would print grids of blank half blocks."""
    return console.color_system is not None and not console.no_color


@lru_cache(maxsize=256)
def _pixels(path: str, width: int, height: int) -> Optional[tuple[tuple[tuple[int, int, int], ...], ...]]:
    """Rows of RGB pixels (height*2 rows of width), or None when the image cannot be read."""
    from PIL import Image

    from retrieval.preprocess import ImageLoadError, circle_crop, load_image

    try:
        img = circle_crop(load_image(path))
    except ImageLoadError:
        return None
    img = img.convert("RGB").resize((width, height * 2), Image.Resampling.BOX)
    data = list(img.getdata())
    return tuple(tuple(data[r * width:(r + 1) * width]) for r in range(height * 2))


def thumbnail(path: str, width: int = WIDTH, height: int = HEIGHT) -> Text:
    """The image as width x height cells of '▀'; a one-line note where the file cannot be read."""
    px = _pixels(str(path), width, height)
    if px is None:
        return Text("(unreadable)".center(width)[:width], style="dim")
    text = Text()
    for r in range(height):
        top, bottom = px[2 * r], px[2 * r + 1]
        for (tr, tg, tb), (br, bg, bb) in zip(top, bottom):
            text.append(HALF, Style(color=f"rgb({tr},{tg},{tb})", bgcolor=f"rgb({br},{bg},{bb})"))
        if r < height - 1:
            text.append("\n")
    return text


def thumbnail_strip(rows: Iterable[AnswerRow], console_width: int, width: int = WIDTH, height: int = HEIGHT,
                    limit: int = 8) -> Optional[RenderableType]:
    """Answer rows side by side as thumbnails with '#rank' under each, as many as fit the console."""
    rows = list(rows)
    fit = max(1, (console_width + GAP) // (width + GAP))
    rows = rows[: min(limit, fit)]
    if not rows:
        return None
    grid = Table.grid(padding=(0, GAP, 0, 0))
    for _ in rows:
        grid.add_column(width=width, no_wrap=True)
    cells = []
    for r in rows:
        cell = thumbnail(r.path, width, height)
        cell.append("\n" + f"#{r.rank}".center(width), style="bold")
        cells.append(cell)
    grid.add_row(*cells)
    return grid
