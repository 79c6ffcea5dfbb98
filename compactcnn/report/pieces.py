"""The pieces a report is built from, rendered alike as Markdown and as HTML.

A report is a flat list of pieces. Each kind of piece is its own small frozen dataclass, so a
misspelled kind is a NameError at once rather than a block that a renderer silently skips, and
the renderers dispatch on the type (an unknown type raises TypeError).

Text in `Heading`, `Paragraph` and `Callout` may hold two inline marks, `**bold**` and
`` `code` ``: Markdown shows them as they are and the HTML renderer converts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    """A section title.

    Attributes:
        text: The title.
        level: 1 for the page title, 2 for sections, 3 for subsections.
    """

    text: str
    level: int = 2

    def __post_init__(self) -> None:
        # Markdown and HTML both have deeper levels, but the report uses three; a 0 or a 4 is a
        # slip that would otherwise render as a paragraph-sized or oddly nested title.
        if self.level not in (1, 2, 3):
            raise ValueError(f"heading level must be 1, 2 or 3, not {self.level!r}")


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of running text."""

    text: str


@dataclass(frozen=True)
class Callout:
    """A paragraph the reader must not miss (the chosen model), set off in the HTML page."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table of text cells; a newline in a cell is a line break in HTML, a space in Markdown.

    Attributes:
        headers: One name per column.
        rows: The rows, each with one cell per column. No rows renders as a dash.
        fold: True for tables that may grow long (one row per file): the HTML page shows them
            folded behind a one-line summary when they have many rows.
    """

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    fold: bool = False


@dataclass(frozen=True)
class Figure:
    """A chart image.

    Attributes:
        path: Where the PNG file is, relative to the report's folder; Markdown links it, the
            HTML page embeds its bytes.
        alt: Text shown instead of the image.
    """

    path: str
    alt: str


Piece = Heading | Paragraph | Callout | Table | Figure
