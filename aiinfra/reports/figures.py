"""A matplotlib figure drawn off-screen and embedded in a page as a data URI.

Figures are ``matplotlib.figure.Figure`` objects on the Agg canvas, never pyplot: rendering
switches no global backend and leaves no open figure behind, so it is safe in worker threads
and in processes that draw nothing else. Importing this module imports matplotlib (a few
hundred ms), so modules that only sometimes draw import it where they draw.
"""

from __future__ import annotations

import base64
import io
from typing import Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["data_uri", "new_figure"]

_MIME = {"png": "image/png", "svg": "image/svg+xml"}


def new_figure(width: float, height: float, *, dpi: int = 100,
               layout: Literal["constrained", "tight"] = "constrained") -> Figure:
    """A figure of ``width`` x ``height`` inches; its layout engine fits labels and legends when it is drawn."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)  # attaches itself to the figure: savefig then needs no pyplot backend
    return fig


def data_uri(fig: Figure, *, fmt: Literal["png", "svg"] = "png") -> str:
    """``fig`` as a base64 ``data:`` URI for an ``<img src>``; the figure is cleared (done with) afterwards."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt)
    finally:
        fig.clear()  # not registered with pyplot, so there is nothing to close: release its artists now
    return f"data:{_MIME[fmt]};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
