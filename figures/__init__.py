"""One function per figure, each returning a matplotlib Figure; ``save_figure`` writes one."""

from __future__ import annotations

from pathlib import Path


def save_figure(figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically (creating the folder) and close it."""
    import matplotlib.pyplot as plt

    from probes.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        figure.savefig(partial, dpi=130, format="png")
    plt.close(figure)
    return path
