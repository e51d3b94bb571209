"""The user's own data: ``folder:PATH`` (images) and ``npy:PATH`` (array files)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.config import DataConfig
from vaelab.data import load_dataset
from vaelab.errors import VaelabError


def cfg(name: str, **kw) -> DataConfig:
    kw.setdefault("binarize", "none")
    kw.setdefault("valid_size", 0)
    return DataConfig(name=name, **kw)


def every(b) -> torch.Tensor:
    return torch.cat([x for x in (b.train, b.valid, b.test) if x is not None])


def save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


# ----------------------------------------------------------------------------- folder:


def test_folder_of_grey_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 9, 7), dtype=np.uint8)
    for i, im in enumerate(images):
        save(tmp_path / f"img{i:02d}.png", im)
    b = load_dataset(cfg(f"folder:{tmp_path}"))
    assert b.spec.shape == (1, 9, 7) and b.spec.values == "continuous" and b.train_labels is None
    assert len(b.train) + len(b.test) == 12 and len(b.test) == 1  # 10% carved for test
    got = {tuple((x[0] * 255).round().to(torch.uint8).flatten().tolist()) for x in every(b)}
    assert got == {tuple(im.flatten().tolist()) for im in images}


def test_folder_subfolders_become_labels_and_rgb_is_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for cls, n in (("cats", 6), ("dogs", 4), ("eels", 5)):
        for i in range(n):
            save(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    save(tmp_path / "eels" / "deeper" / "x.jpg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    save(tmp_path / ".hidden" / "skip.png", np.zeros((8, 8), np.uint8))
    b = load_dataset(cfg(f"folder:{tmp_path}", valid_size=3))
    assert b.spec.shape == (3, 8, 8) and b.class_names == ["cats", "dogs", "eels"] and b.spec.n_classes == 3
    labels = torch.cat([b.train_labels, b.valid_labels, b.test_labels])
    assert torch.bincount(labels).tolist() == [6, 4, 6] and len(b.valid) == 3


def test_folder_channels_setting_and_mixed_modes(tmp_path: Path) -> None:
    save(tmp_path / "a.png", np.full((4, 4), 200, np.uint8))
    save(tmp_path / "b.png", np.dstack([np.full((4, 4), v, np.uint8) for v in (255, 0, 0)]))
    mixed = load_dataset(cfg(f"folder:{tmp_path}"))  # one RGB file: channels 0 -> RGB
    assert mixed.spec.shape == (3, 4, 4)
    grey = load_dataset(cfg(f"folder:{tmp_path}", channels=1))
    assert grey.spec.shape == (1, 4, 4)
    # PIL's ITU-R 601 luma of pure red is 76/255
    values = sorted(round(float(x.mean()) * 255) for x in every(grey))
    assert values == [76, 200]


def test_folder_sizes_must_agree_unless_image_size_is_given(tmp_path: Path) -> None:
    save(tmp_path / "small.png", np.zeros((10, 10), np.uint8))
    save(tmp_path / "wide.png", np.full((10, 30), 255, np.uint8))
    with pytest.raises(VaelabError) as exc:
        load_dataset(cfg(f"folder:{tmp_path}"))
    msg = str(exc.value)
    assert "small.png is 10x10 (HxW) but wide.png is 10x30" in msg and "--set data.image_size=[H,W]" in msg
    b = load_dataset(cfg(f"folder:{tmp_path}", image_size=[6, 5]))
    assert b.spec.shape == (1, 6, 5)
    assert sorted(float(x.mean()) for x in every(b)) == [0.0, 1.0]  # constant images stay constant


def test_folder_16bit_grey_png(tmp_path: Path) -> None:
    save(tmp_path / "deep.png", np.full((3, 3), 65535, np.uint16))
    save(tmp_path / "half.png", np.full((3, 3), 257 * 100, np.uint16))
    b = load_dataset(cfg(f"folder:{tmp_path}"))
    assert b.spec.shape == (1, 3, 3)
    assert sorted(round(float(x.mean()) * 255) for x in every(b)) == [100, 255]


def test_empty_folder_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(VaelabError) as exc:
        load_dataset(cfg(f"folder:{tmp_path}"))
    msg = str(exc.value)
    assert "\n" not in msg and f"folder {tmp_path} holds no images" in msg
    with pytest.raises(VaelabError, match="is not a folder"):
        load_dataset(cfg(f"folder:{tmp_path / 'nope'}"))
    with pytest.raises(VaelabError, match="needs a path after 'folder:'"):
        load_dataset(cfg("folder:"))


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n garbage", b"", "truncated"])
def test_broken_png_names_the_file(tmp_path: Path, content: bytes | str) -> None:
    save(tmp_path / "good.png", np.zeros((64, 64), np.uint8))
    if content == "truncated":
        save(tmp_path / "bad.png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
        data = (tmp_path / "bad.png").read_bytes()
        (tmp_path / "bad.png").write_bytes(data[: len(data) // 2])
    else:
        (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(VaelabError) as exc:
        load_dataset(cfg(f"folder:{tmp_path}"))
    msg = str(exc.value)
    assert (
        "\n" not in msg and f"cannot read image {tmp_path / 'bad.png'}" in msg and "remove or replace" in msg
    )


# ----------------------------------------------------------------------------- npy:


@pytest.mark.parametrize(
    ("shape", "spec_shape"),
    [
        ((20, 5, 6), (1, 5, 6)),
        ((20, 5, 6, 1), (1, 5, 6)),
        ((20, 5, 6, 3), (3, 5, 6)),
        ((20, 3, 5, 6), (3, 5, 6)),
        ((20, 1, 5, 6), (1, 5, 6)),
        ((20, 17), (1, 1, 17)),
    ],
)
def test_npy_accepted_shapes(tmp_path: Path, shape: tuple[int, ...], spec_shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    b = load_dataset(cfg(f"npy:{tmp_path / 'x.npy'}"))
    assert b.spec.shape == spec_shape and len(b.train) + len(b.test) == 20 and len(b.test) == 2
    # Values: uint8 / 255, and channels-last input transposed, not reshaped.
    if len(shape) == 4 and shape[3] == 3:
        ref = x.transpose(0, 3, 1, 2)
    else:
        ref = x.reshape(20, *spec_shape)
    assert b.train.is_contiguous() and b.test.is_contiguous()
    want = {r.tobytes() for r in ref}
    got = {(t * 255).round().to(torch.uint8).numpy().tobytes() for t in every(b)}
    assert got == want


def test_npy_floats_bool_and_npz_with_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((30, 4, 4)).astype(np.float64)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 3)
    b = load_dataset(cfg(f"npy:{tmp_path / 'd.npz'}", valid_size=0.2))
    assert b.train.dtype == torch.float32 and b.spec.n_classes == 3
    assert len(b.train) == 22 and len(b.valid) == 5 and len(b.test) == 3
    labels = torch.cat([b.train_labels, b.valid_labels, b.test_labels])
    assert torch.bincount(labels).tolist() == [10, 10, 10]
    np.savez(tmp_path / "one.npz", images=np.ones((10, 2, 2), bool))
    b = load_dataset(cfg(f"npy:{tmp_path / 'one.npz'}"))
    assert float(every(b).min()) == 1.0
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(VaelabError, match="holds arrays a, b; name the data array x"):
        load_dataset(cfg(f"npy:{tmp_path / 'two.npz'}"))


@pytest.mark.parametrize("shape", [(10,), (10, 5, 5, 5), (10, 2, 4, 4, 3), (10, 4, 4, 2)])
def test_npy_bad_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "x.npy", np.zeros(shape, np.uint8))
    with pytest.raises(VaelabError) as exc:
        load_dataset(cfg(f"npy:{tmp_path / 'x.npy'}"))
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"holds an array of shape {shape}; accepted shapes are (N, H, W), (N, C, H, W)" in msg


def test_npy_pickles_are_refused_unopened(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    np.save(tmp_path / "obj.npy", np.array([Boom(), 1], dtype=object), allow_pickle=True)
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(Boom()))
    np.savez(tmp_path / "obj.npz", x=np.array([Boom(), 1], dtype=object))
    for name in ("obj.npy", "raw.npy", "obj.npz"):
        with pytest.raises(VaelabError) as exc:
            load_dataset(cfg(f"npy:{tmp_path / name}"))
        msg = str(exc.value)
        assert "holds pickled Python objects, which vaelab refuses to unpickle" in msg, msg


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((5, 3, 3), 1.5, np.float32), r"values from 1.5 to 1.5; rescale them to \[0, 1\]"),
        (np.full((5, 3, 3), -0.1), r"values from -0.1 to -0.1; rescale"),
        (np.full((5, 3, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((5, 3, 3), 300, np.int64), "int64 values from 300 to 300"),
        (np.zeros((0, 3, 3), np.uint8), "holds no examples"),
        (np.full((5, 3, 3), "a"), "dtype <U1"),
    ],
)
def test_npy_bad_values(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(VaelabError, match=match):
        load_dataset(cfg(f"npy:{tmp_path / 'x.npy'}"))


def test_npy_missing_and_not_numpy(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match="not found; give the path of a .npy or .npz file"):
        load_dataset(cfg(f"npy:{tmp_path / 'none.npy'}"))
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(VaelabError, match="is not a .npy or .npz file"):
        load_dataset(cfg(f"npy:{tmp_path / 'text.npy'}"))
    np.save(tmp_path / "cut.npy", np.zeros((100, 8, 8), np.float32))
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:1000])
    with pytest.raises(VaelabError, match="cut.npy is not a valid .npy/.npz file"):
        load_dataset(cfg(f"npy:{tmp_path / 'cut.npy'}"))
