"""The shared figure style and the cell numbers of the three heatmaps: white on dark cells, black on light ones."""

import matplotlib
import numpy as np
import pytest

from figures import interventions, probes, study
from figures.style import PALETTE, STYLE, annotate_cells, text_colour


def _colours(ax) -> dict[str, str]:
    return {text.get_text(): text.get_color() for text in ax.texts}


def test_importing_figures_applies_the_style():
    assert matplotlib.rcParams["font.size"] == STYLE["font.size"]
    assert [c.lower() for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]] == [c.lower() for c in PALETTE]


@pytest.mark.parametrize(
    "colour, expected",
    [
        ((0, 0, 0, 1), "white"),
        ((1, 1, 1, 1), "black"),
        ((0.02, 0.19, 0.38), "white"),  # RdBu's darkest blue
        ((0.4, 0.0, 0.05), "white"),
        ((0.97, 0.97, 0.97), "black"),
        ((1.0, 0.9, 0.3), "black"),  # dark red, light grey, yellow
        ((0.45, 0.45, 0.45), "white"),
        ((0.5, 0.5, 0.5), "black"),  # either side of the WCAG crossover
    ],
)
def test_text_colour_follows_luminance(colour, expected):
    assert text_colour(colour) == expected


def test_annotate_cells_reads_the_colour_of_each_cell_from_the_image():
    fig, ax = matplotlib.pyplot.subplots()
    grid = np.array([[-1.0, 0.0], [1.0, np.nan]])
    image = ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1)
    texts = annotate_cells(ax, image, grid, lambda i, j, value: f"{i}{j}:{value:+.1f}")
    assert [(t.get_text(), t.get_color()) for t in texts] == [
        ("00:-1.0", "white"),
        ("01:+0.0", "black"),
        ("10:+1.0", "white"),
    ]
    assert texts[0].get_position() == (0, 0) and texts[2].get_position() == (0, 1)  # (column, row)
    viridis = ax.imshow(grid, cmap="viridis", vmin=-1, vmax=1)  # dark purple, teal (black reads better), yellow
    assert [t.get_color() for t in annotate_cells(ax, viridis, grid)] == ["white", "black", "black"]
    matplotlib.pyplot.close(fig)


def test_patching_heatmap_writes_white_on_its_dark_cells():
    rows = [
        {"layer": layer, "group": group, "fraction": fraction, "n": 8}
        for layer, group, fraction in ((0, "query", 0.0), (0, "final", 1.1), (2, "query", -1.1), (2, "final", 0.15))
    ]
    ax = interventions.patching_heatmap(rows).axes[0]
    assert _colours(ax) == {"0.00": "black", "1.10": "white", "-1.10": "white", "0.15": "black"}


def test_cosine_heatmap_writes_white_on_its_dark_cells():
    matrix = np.array([[1.0, 0.05], [0.05, 1.0]])
    ax = probes.cosine_heatmap(["math", "writing"], matrix, "cosines").axes[0]
    assert [(t.get_text(), t.get_color()) for t in ax.texts] == [
        ("1.00", "white"),
        ("0.05", "black"),
        ("0.05", "black"),
        ("1.00", "white"),
    ]


def test_persona_heatmap_writes_white_on_its_dark_cells():
    rows = [
        {
            "task": "capitals",
            "condition": f"{persona}/min/system[empty]",
            "persona_spec": persona,
            "length": "min",
            "placement": "system",
            "category": "Europe",
            "metric": "margin",
            "reference": "none[empty]",
            "n": 12,
            "delta": delta,
            "low": delta - 0.1,
            "high": delta + 0.1,
            "significant": abs(delta) > 0.1,
        }
        for persona, delta in (("math", -0.8), ("writing", 0.02), ("critic", 0.8))
    ]
    ax = study.persona_lift_heatmap(rows, "capitals", "margin").axes[0]
    assert _colours(ax) == {"-0.80*": "white", "+0.02": "black", "+0.80*": "white"}
