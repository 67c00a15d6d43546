"""Report pages from Jinja2 templates shipped with the package, every value autoescaped.

A page is a title, a stylesheet, a few lead blocks and titled sections; a block is a paragraph,
a table or an image. Report builders produce these plain values and never write markup, so a
model name, a feature called ``<x>`` or a reason with ``&`` in it cannot break the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import jinja2

__all__ = ["Block", "Cell", "Image", "Paragraph", "Section", "Table", "note", "render_page"]


@dataclass(frozen=True)
class Paragraph:
    """``<p>``; ``strong`` is a bold lead-in, ``css`` a class ("note", "meta") from the stylesheet."""

    kind: ClassVar[str] = "paragraph"
    text: str
    strong: str = ""
    css: str = ""


@dataclass(frozen=True)
class Cell:
    text: str
    numeric: bool = False  # right-aligned, tabular figures


@dataclass(frozen=True)
class Table:
    kind: ClassVar[str] = "table"
    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]


@dataclass(frozen=True)
class Image:
    """An embedded image (``src`` a data URI, see ``figures``); with a caption it becomes a ``<figure>``."""

    kind: ClassVar[str] = "image"
    src: str
    alt: str
    caption: str = ""


Block = Paragraph | Table | Image


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block]


def note(text: str) -> Paragraph:
    """A muted one-liner: "no data", "only the first 24 features are plotted", ..."""
    return Paragraph(text, css="note")


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("aiinfra.reports", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render_page(*, title: str, stylesheet: str, lead: Sequence[Block] = (),
                sections: Sequence[Section] = ()) -> str:
    """One HTML page with no external resources; ``stylesheet`` names a ``.css`` file under templates/."""
    return _ENV.get_template("page.html").render(title=title, stylesheet=stylesheet, lead=lead, sections=sections)
