"""Figures on disk: the format follows the path's suffix, a PNG gets its PDF twin, writes are atomic."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from probes.core.errors import ToolkitError  # noqa: E402
from probes.core.files import METADATA_KEY, figure_format, load_tensors, save_figure, write_json  # noqa: E402


def _figure(title: str = "persona effect"):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0.1, -0.2, 0.3], label="expert")
    ax.set_title(title)
    return fig


def test_a_png_path_gives_a_200_dpi_png_and_its_pdf_twin(tmp_path):
    fig = _figure()
    path = save_figure(fig, tmp_path / "figures" / "fig1.png")
    assert path == tmp_path / "figures" / "fig1.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "figures" / "fig1.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in path.parent.iterdir()) == ["fig1.pdf", "fig1.png"]
    dpi = Image.open(path).info["dpi"]
    assert dpi == pytest.approx((200, 200), abs=0.5)
    assert not plt.fignum_exists(fig.number)  # closed


@pytest.mark.parametrize("name, magic", [("fig1d.pdf", b"%PDF"), ("fig1d.svg", b"<?xml"), ("FIG1D.PDF", b"%PDF")])
def test_a_vector_path_gives_that_format_alone(tmp_path, name, magic):
    path = save_figure(_figure(), tmp_path / name)
    data = path.read_bytes()
    assert data.startswith(magic) and [p.name for p in tmp_path.iterdir()] == [name]
    if name.endswith(".svg"):
        assert b"<svg" in data[:1000]


@pytest.mark.parametrize("name", ["fig.svg", "fig.pdf", "fig.png"])
def test_the_same_figure_gives_the_same_bytes(tmp_path, name):
    first = save_figure(_figure(), tmp_path / "a" / name).read_bytes()
    assert save_figure(_figure(), tmp_path / "b" / name).read_bytes() == first


@pytest.mark.parametrize("name", ["fig.jpg", "fig", "fig.png.bak"])
def test_an_unknown_suffix_is_refused_in_one_line_and_nothing_is_written(tmp_path, name):
    fig = _figure()
    with pytest.raises(ToolkitError) as error:
        save_figure(fig, tmp_path / name)
    message = str(error.value)
    assert (
        "\n" not in message and all(suffix in message for suffix in (".png", ".pdf", ".svg")) and repr(name) in message
    )
    assert list(tmp_path.iterdir()) == [] and not plt.fignum_exists(fig.number)
    with pytest.raises(ToolkitError):
        figure_format(name)
    assert figure_format("x.Svg") == "svg"


def test_a_figure_that_fails_to_draw_replaces_neither_file(tmp_path):
    save_figure(_figure(), tmp_path / "fig.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    broken = _figure(title=r"$\frac{1$")  # mathtext that cannot be parsed: drawing raises
    with pytest.raises(ValueError):
        save_figure(broken, tmp_path / "fig.png")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no partial files either
    assert not plt.fignum_exists(broken.number)


def test_tensors_whose_toolkit_metadata_is_not_json_fail_in_one_line(tmp_path):
    path = tmp_path / "probe.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: "{not json"})
    with pytest.raises(ToolkitError, match="damaged toolkit metadata") as caught:
        load_tensors(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_are_written_with_the_permissions_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "result.json", {"a": 1})
        save_figure(_figure(), tmp_path / "fig.png")
    finally:
        os.umask(previous)
    for name in ("result.json", "fig.png", "fig.pdf"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
