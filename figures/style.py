"""The figures' shared look and the numbers written on heatmap cells: the one module figure modules share.

``STYLE`` holds the matplotlib settings that let a figure print at a paper's column width (font
sizes from 7 to 10 points, thin lines) and a colour-blind safe palette (Okabe & Ito's eight
colours, ``PALETTE``, also the default colour cycle). Importing the ``figures`` package applies it
(``apply_style``), so every figure module, imported or not by another, draws in it; how a figure
is written (200 dpi PNG with a PDF twin, tight bounding box) is ``probes.core.files.save_figure``'s.

``annotate_cells`` writes a heatmap's values on its cells, each in white on a dark cell and in
black on a light one: the cell's colour is read from the image's own colormap and scale.
"""

from __future__ import annotations

from typing import Callable

import matplotlib
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.image import AxesImage
from matplotlib.text import Text

__all__ = [
    "BLACK",
    "BLUE",
    "GREEN",
    "GREY",
    "LIGHT_GREY",
    "ORANGE",
    "PALETTE",
    "PURPLE",
    "SKY",
    "STYLE",
    "VERMILION",
    "YELLOW",
    "annotate_cells",
    "apply_style",
    "text_colour",
]

# Okabe & Ito (2008), "Color Universal Design": told apart under every common colour-vision deficiency
BLUE, ORANGE, GREEN, VERMILION, PURPLE, SKY, YELLOW, BLACK = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
PALETTE = (BLUE, ORANGE, GREEN, VERMILION, PURPLE, SKY, YELLOW, BLACK)
GREY, LIGHT_GREY = "#636363", "#BDBDBD"

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "axes.prop_cycle": cycler(color=PALETTE),
    "image.cmap": "viridis",
}

# Relative luminance (WCAG 2) at which black and white text have the same contrast with the cell:
# (L + 0.05) / 0.05 == 1.05 / (L + 0.05). Darker cells get white text, lighter ones black.
DARK_BELOW = 0.179


def apply_style() -> None:
    """Set ``STYLE`` in matplotlib's ``rcParams`` (for every figure drawn afterwards)."""
    matplotlib.rcParams.update(STYLE)


def text_colour(rgba: tuple[float, ...]) -> str:
    """``"white"`` on a dark colour, ``"black"`` on a light one, by its relative luminance (WCAG 2).

    Args:
        rgba: the colour's red, green and blue in 0..1 (alpha, if there, is ignored).

    Returns:
        ``"white"`` or ``"black"``, whichever contrasts more with the colour.
    """
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "white" if luminance < DARK_BELOW else "black"


def annotate_cells(
    ax: Axes,
    image: AxesImage,
    values: np.ndarray,
    label: Callable[[int, int, float], str] | None = None,
    fontsize: float = 7,
) -> list[Text]:
    """Write each cell's value at its centre, in the colour that reads on that cell.

    Args:
        ax: the axes that hold ``image``.
        image: the heatmap (``ax.imshow``), whose colormap and scale give each cell's colour.
        values: the heatmap's grid [rows, columns]; NaN cells stay blank.
        label: ``(row, column, value) -> text`` (default: the value to two decimals).
        fontsize: the numbers' size in points.

    Returns:
        the texts written, row by row.
    """
    grid = np.asarray(values, dtype=float)
    texts = []
    for (i, j), value in np.ndenumerate(grid):
        if np.isnan(value):
            continue
        colour = text_colour(image.cmap(image.norm(value)))
        text = label(i, j, value) if label is not None else f"{value:.2f}"
        texts.append(ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour))
    return texts
