"""The book's one plotting style and its one animation helper.

Every notebook calls :func:`use_book_style` once; figures then fit the page width
and share colours. :func:`animation_html` turns a drawing function into a
self-contained HTML animation with a slider (matplotlib's ``to_jshtml``): the static
companion of a widget, which plays in the rendered book with no kernel and no network.
"""

from __future__ import annotations

import re

import matplotlib
import matplotlib.pyplot as plt
from matplotlib import animation

# Colour-blind-safe palette (Okabe & Ito), in the order curves are drawn.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
_BUTTON_SYMBOLS = {  # matplotlib's Font Awesome icons -> text
    "fa-minus": "&minus;", "fa-fast-backward": "|&#9664;", "fa-step-backward": "&#9664;|",
    "fa-play fa-flip-horizontal": "&#9664;", "fa-pause": "&#8214;", "fa-play": "&#9654;",
    "fa-step-forward": "|&#9654;", "fa-fast-forward": "&#9654;|", "fa-plus": "+",
}
PAGE_WIDTH = 7.0  # inches: the text width of the book's HTML theme at 100 dpi


def use_book_style() -> None:
    """Set matplotlib defaults for the book: page-width figures, readable fonts, palette."""
    matplotlib.rcParams.update({
        "figure.figsize": (PAGE_WIDTH, PAGE_WIDTH * 0.42),
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "figure.constrained_layout.use": True,
        "font.size": 10,
        "axes.titlesize": 10,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": matplotlib.cycler(color=COLORS),
        "animation.embed_limit": 8.0,  # MB; animations stay small enough for a web page
    })


def animation_html(fig, draw, frames: int, interval: int = 400) -> str:
    """HTML of an animation whose frame ``k`` is drawn by ``draw(k)`` on ``fig``.

    Returns the ``to_jshtml`` string (frames embedded as images, with play/step
    controls and a slider); display it with ``IPython.display.HTML``. Closes ``fig``
    so that the last frame is not shown twice.
    """
    anim = animation.FuncAnimation(fig, draw, frames=frames, interval=interval)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    # matplotlib draws its buttons with Font Awesome 4 from a CDN; use plain symbols so that
    # the controls show with no network
    html = re.sub(r'<link rel="stylesheet"\s*href="[^"]*font-awesome[^"]*">', "", html)
    for icon, symbol in _BUTTON_SYMBOLS.items():
        html = html.replace(f'<i class="fa {icon}"></i>', symbol)
    return html
