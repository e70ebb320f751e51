"""lib/plotting.py: the book style and animations that play offline."""

import re

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

from lib.plotting import COLORS, PAGE_WIDTH, animation_html, use_book_style  # noqa: E402


def test_book_style_fits_the_page():
    use_book_style()
    assert matplotlib.rcParams["figure.figsize"][0] == PAGE_WIDTH
    assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] == COLORS


def test_animation_needs_no_network():
    fig, ax = plt.subplots()
    html = animation_html(fig, lambda k: ax.plot([0, k]), frames=3)
    assert not re.search(r"https?://", html), "the animation loads something from the web"
    assert 'class="fa' not in html  # Font Awesome icons replaced by text symbols
    assert html.count("<button") == 9 and "&#9654;" in html
    assert not plt.get_fignums()  # the figure was closed, so it is not shown twice
