"""One function per figure, each taking plain results and returning a matplotlib ``Figure``.

The figure modules import no other toolkit package: report writers pass them rows and numbers,
and write what they return with ``probes.core.files.save_figure`` (a PNG with its PDF twin, or the
PDF or SVG a path names). Within ``figures`` the one shared module is ``figures.style``: the look
every figure shares (font sizes for a paper's column, a colour-blind safe palette) and the numbers
on heatmap cells (white on dark cells, black on light ones). A figure module may import it and no
other module of the toolkit, ``figures`` included; importing this package applies the style.
"""

from figures.style import apply_style

apply_style()
