"""The latent explorer without a browser: the section's round trip, the model-side helper
(models/pictures.py) against the model's own decoder, the grid's range, the sprite sheet and its PNG
read back by an independent decoder, and the page block (self-contained, data as given).
The browser half is tests/test_report_explorer.py."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch

from vaelab import sections as sec
from vaelab.errors import VaelabError
from vaelab.models.base import ReportInputs
from vaelab.models.pictures import explorer_grid, explorer_section
from vaelab.models.vae import VAE, VAEConfig
from vaelab.report.explorer import explorer_html, label_colours, png_bytes, sprite_sheet
from vaelab.report.render import render_section
from vaelab.spec import DataSpec


def _section(rng: np.random.Generator, labels: bool = True, g: int = 4) -> sec.ExplorerSection:
    return sec.ExplorerSection(
        name="explorer", title="Latent explorer", caption="c",
        images=rng.integers(0, 256, (g, g, 1, 3, 2), dtype=np.uint8), grid=np.linspace(-2, 2, g),
        codes=rng.normal(size=(25, 2)).astype(np.float32),
        labels=rng.integers(0, 10, 25) if labels else None,
    )


@pytest.mark.parametrize("labels", [True, False])
def test_the_explorer_section_round_trips_through_a_run_folder(tmp_path, labels: bool) -> None:
    s = _section(np.random.default_rng(0), labels)
    sec.write_sections(tmp_path, [s])
    (back,) = sec.read_sections(tmp_path)
    assert type(back) is sec.ExplorerSection and back.kind == "explorer"
    for f in ("images", "grid", "codes"):
        a, b = getattr(s, f), getattr(back, f)
        assert a.dtype == b.dtype and np.array_equal(a, b), f
    assert (back.labels is None) if not labels else np.array_equal(back.labels, s.labels)
    assert (back.name, back.title, back.caption) == (s.name, s.title, s.caption)


def _vae(seed: int = 0, shape: tuple[int, ...] = (1, 7, 5)) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig(latent_dim=2, hidden=[16]), DataSpec(shape=shape, values="binary")).eval()


def test_each_grid_cell_holds_the_models_decode_at_its_z() -> None:
    """images[i, j] == decode_mean(z = (grid[j], grid[i])) for a random VAE on non-square images,
    within one grey level (uint8 rounding of floats computed in a different batch)."""
    model = _vae()
    codes = torch.randn(300, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([2.0, 0.5])
    s = explorer_section(model.decode_mean, codes, torch.arange(300) % 10, n=31)
    assert s.images.shape == (31, 31, 1, 7, 5) and s.images.dtype == np.uint8
    assert s.grid.shape == (31,) and np.all(np.diff(s.grid) > 0)
    assert np.allclose(s.grid, -s.grid[::-1], atol=1e-5)  # symmetric (float32 linspace: ~1e-7 off)
    for i, j in [(0, 0), (0, 30), (30, 0), (7, 22), (15, 15)]:
        with torch.no_grad():
            want = model.decode_mean(torch.tensor([[s.grid[j], s.grid[i]]], dtype=torch.float32))[0]
        want = (want.clamp(0, 1) * 255).round().numpy()
        assert np.abs(s.images[i, j].astype(int) - want).max() <= 1, (i, j)
    # different cells hold different decodes (a broadcast of one z would pass the loop above at (15, 15))
    assert not np.array_equal(s.images[0, 0], s.images[30, 30])
    assert np.array_equal(s.codes, codes.numpy()) and np.array_equal(s.labels, np.arange(300) % 10)


def test_the_grid_orientation_columns_vary_z1_rows_vary_z2() -> None:
    """A decoder whose pixel 0 is sigmoid(z1) and pixel 1 sigmoid(z2): brightness must rise along
    columns in pixel 0 and along rows in pixel 1."""
    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z).reshape(-1, 1, 1, 2)

    s = explorer_section(decode, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), n=30)
    p0, p1 = s.images[..., 0, 0, 0].astype(int), s.images[..., 0, 0, 1].astype(int)
    assert np.all(np.diff(p0, axis=1) >= 0) and np.all(np.diff(p0, axis=0) == 0)
    assert np.all(np.diff(p1, axis=0) >= 0) and np.all(np.diff(p1, axis=1) == 0)
    assert p0[0, -1] > p0[0, 0] + 50 and p1[-1, 0] > p1[0, 0] + 50


def test_the_grid_covers_the_posterior_means_and_defaults_to_the_priors_three_sigma() -> None:
    # |codes| uniform on [0, 2] (both signs): the 99.5% quantile is 1.99, so r = 1.1 * 1.99
    codes = torch.linspace(-2, 2, 4000).reshape(-1, 2)
    grid = explorer_grid(codes, 40)
    q = torch.quantile(codes.abs().flatten().double(), 0.995).item()
    assert grid.shape == (40,) and grid[-1].item() == pytest.approx(1.1 * q, rel=1e-6)
    assert grid[0].item() == pytest.approx(-grid[-1].item())
    one_far = torch.cat([codes, torch.tensor([[50.0, 0.0]])])  # one stray mean does not stretch it
    assert explorer_grid(one_far, 40)[-1].item() == pytest.approx(grid[-1].item(), rel=1e-3)
    assert explorer_grid(None, 30)[-1].item() == 3.0
    assert explorer_grid(torch.zeros(5, 2), 30)[0].item() == -3.0


def test_the_helper_refuses_codes_that_are_not_2d_and_decodes_that_are_not_images() -> None:
    model = _vae()
    with pytest.raises(VaelabError, match=r"2-D latent space: codes of shape \(N, 2\)"):
        explorer_section(model.decode_mean, torch.zeros(5, 3))
    with pytest.raises(VaelabError, match="decodes that are images"):
        explorer_section(lambda z: torch.zeros(len(z), 4), torch.zeros(5, 2), n=30)


def test_a_2d_vae_writes_the_explorer_and_a_larger_latent_does_not() -> None:
    x = (torch.rand(64, 1, 7, 5, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    inputs = ReportInputs(batches=[x[:32], x[32:]], labels=torch.arange(64) % 3, n_samples=4)
    with torch.no_grad():
        found = {s.name: s for s in _vae().report_sections(inputs)}
    s = found["explorer"]
    assert isinstance(s, sec.ExplorerSection) and s.images.shape[:2] == (41, 41)
    assert np.array_equal(s.codes, found["latents"].codes) and np.array_equal(s.labels, np.arange(64) % 3)
    torch.manual_seed(0)
    big = VAE(VAEConfig(latent_dim=3, hidden=[16]), DataSpec(shape=(1, 7, 5), values="binary")).eval()
    with torch.no_grad():
        assert "explorer" not in {s.name for s in big.report_sections(inputs)}


@pytest.mark.parametrize("c", [1, 3])
def test_the_sprite_sheet_png_decodes_to_tile_ij_at_row_i_column_j(c: int) -> None:
    from matplotlib.image import imread  # an independent PNG decoder (Pillow's)

    rng = np.random.default_rng(c)
    images = rng.integers(0, 256, (5, 5, c, 3, 4), dtype=np.uint8)
    sheet = sprite_sheet(images)
    back = np.round(imread(io.BytesIO(png_bytes(sheet)), format="png") * 255).astype(np.uint8)
    assert np.array_equal(back, sheet)
    assert back.shape == ((15, 20) if c == 1 else (15, 20, 3))
    for i, j in [(0, 0), (1, 3), (4, 2)]:
        tile = back[3 * i:3 * i + 3, 4 * j:4 * j + 4]
        assert np.array_equal(tile.reshape(3, 4, c).transpose(2, 0, 1), images[i, j]), (i, j)
    assert np.array_equal(sprite_sheet(images / 255.0), sheet)  # floats in [0, 1] are scaled


def test_label_colours_one_per_class_or_bins_of_a_ramp() -> None:
    index, colours, legend = label_colours(np.array([3, 7, 3, 9]), 4)
    assert index == [0, 1, 0, 2] and len(colours) == 3 and [t for _, t in legend] == ["3", "7", "9"]
    index, colours, legend = label_colours(np.linspace(0.0, 1.0, 9), 9)
    assert index[0] == 0 and index[-1] == 7 and len(legend) == 8 and index == sorted(index)
    assert label_colours(None, 3) == ([0, 0, 0], colours[:0] + ["#1f77b4"], [])
    with pytest.raises(ValueError, match="2 labels for 3"):
        label_colours(np.array([1, 2]), 3)


def test_the_block_is_self_contained_and_carries_the_data_as_given() -> None:
    s = _section(np.random.default_rng(3))
    body = render_section(s).body
    assert "class='note'" not in body
    assert not re.search(r"(src|href)=['\"](?!data:)", body) and "http" not in body  # nothing fetched
    data = json.loads(re.search(r"<script type='application/json' class='vx-data'>(.*?)</script>", body)[1])
    assert np.allclose(np.reshape(data["points"], (-1, 2)), s.codes, atol=5e-4)
    assert data["lo"] == pytest.approx(-2 - 2 / 3) and data["hi"] == pytest.approx(2 + 2 / 3)
    sprite = re.search(r"class='vx-sprite' hidden alt='[^']*' src='data:image/png;base64,([^']*)'", body)[1]
    assert base64.b64decode(sprite) == png_bytes(sprite_sheet(s.images))
    bad = sec.ExplorerSection(name="x", title="X", images=s.images, grid=np.zeros(3), codes=s.codes)
    note = render_section(bad).body  # a note, the page is still built
    assert "Could not draw section &#x27;x&#x27;: the explorer&#x27;s grid must be 4 increasing" in note
    with pytest.raises(ValueError, match="codes must be"):
        explorer_html(sec.ExplorerSection(name="y", title="Y", images=s.images, grid=s.grid,
                                          codes=s.codes[:, :1]))
