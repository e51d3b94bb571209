"""Missing, truncated and corrupt files; malformed content; splits, limits and binarization.

Every user-facing failure must be a one-line VaelabError naming the file and the fix.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data import ImageSplits, binarize, finish, get_dataset, load_dataset, read_file
from vaelab.data.frey import parse_frey
from vaelab.data.mnist import parse_amat, parse_idx
from vaelab.errors import VaelabError


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def mnist_root_with(tmp_path: Path, data_root: Path, bad: str, content: bytes | None) -> Path:
    """A data root whose mnist/ links to the real files except ``bad`` (absent if content is None)."""
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for f in get_dataset("mnist").files:
        if f.name != bad:
            (folder / f.name).symlink_to(data_root / "mnist" / f.name)
        elif content is not None:
            (folder / f.name).write_bytes(content)
    return tmp_path / "data"


# ----------------------------------------------------------------------------- missing / corrupt


@pytest.mark.datasets("mnist")
def test_missing_file_names_file_path_and_fix(tmp_path: Path, data_root: Path) -> None:
    data = mnist_root_with(tmp_path, data_root, "t10k-labels-idx1-ubyte.gz", None)
    with pytest.raises(VaelabError) as exc:
        load_dataset(DataConfig(name="mnist"), root=data)
    msg = one_line(exc)
    assert (
        "t10k-labels-idx1-ubyte.gz not found at " + str(data / "mnist" / "t10k-labels-idx1-ubyte.gz") in msg
    )
    assert "vaelab data download mnist" in msg and "VAELAB_DATA" in msg


def test_missing_with_empty_root(tmp_path: Path) -> None:
    with pytest.raises(VaelabError) as exc:
        load_dataset(DataConfig(name="frey"), root=tmp_path)
    msg = one_line(exc)
    assert f"frey_rawface.mat not found at {tmp_path / 'freyface' / 'frey_rawface.mat'}" in msg


def test_data_root_is_vaelab_data_else_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vaelab.data import data_root

    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "d"))
    assert data_root() == tmp_path / "d"
    monkeypatch.delenv("VAELAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "vaelab" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_root() == Path.home() / ".cache" / "vaelab" / "data"


@pytest.mark.datasets("mnist")
def test_truncated_copy_is_corrupt(tmp_path: Path, data_root: Path) -> None:
    name = "train-labels-idx1-ubyte.gz"
    real = (data_root / "mnist" / name).read_bytes()
    data = mnist_root_with(tmp_path, data_root, name, real[: len(real) // 2])
    with pytest.raises(VaelabError) as exc:
        load_dataset(DataConfig(name="mnist"), root=data)
    msg = one_line(exc)
    assert f"file {data / 'mnist' / name} is corrupt" in msg
    assert f"size {len(real) // 2:,} bytes, expected {len(real):,}" in msg
    assert "delete it and run `vaelab data download mnist`" in msg


@pytest.mark.datasets("mnist")
def test_random_bytes_of_the_right_size_fail_the_checksum(tmp_path: Path, data_root: Path) -> None:
    name = "t10k-labels-idx1-ubyte.gz"
    size = (data_root / "mnist" / name).stat().st_size
    junk = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    data = mnist_root_with(tmp_path, data_root, name, junk)
    with pytest.raises(VaelabError) as exc:
        load_dataset(DataConfig(name="mnist"), root=data)
    msg = one_line(exc)
    assert "is corrupt (sha256 " in msg and "expected f7ae60f92e00" in msg
    # Without the checksum the parser still refuses it cleanly.
    with pytest.raises(VaelabError) as exc:
        load_dataset(DataConfig(name="mnist"), root=data, verify=False)
    assert "not a complete gzip stream" in one_line(exc)


@pytest.mark.datasets("binarized_mnist")
def test_truncated_gzip_of_binarized_mnist_is_corrupt(tmp_path: Path, data_root: Path) -> None:
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    real = (data_root / "binarized_mnist" / "binarized_mnist_valid.amat.gz").read_bytes()
    (folder / "binarized_mnist_valid.amat.gz").write_bytes(real[:100_000])
    with pytest.raises(VaelabError) as exc:
        read_file(get_dataset("binarized_mnist"), "binarized_mnist_valid.amat.gz", tmp_path)
    msg = one_line(exc)
    assert "is corrupt (binarized_mnist_valid.amat.gz is not a complete gzip stream" in msg
    assert "vaelab data download binarized_mnist" in msg


@pytest.mark.datasets("binarized_mnist")
def test_binarized_mnist_accepts_the_uncompressed_amat(tmp_path: Path, data_root: Path) -> None:
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        src = data_root / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz"
        if split == "test":  # the original text form, verified by its own sha256
            (folder / f"binarized_mnist_{split}.amat").write_bytes(gzip.decompress(src.read_bytes()))
        else:
            (folder / src.name).symlink_to(src)
    b = load_dataset(DataConfig(name="binarized_mnist"), root=tmp_path)
    assert b.test.shape == (10000, 1, 28, 28) and abs(float(b.test.mean()) - 0.1325) < 5e-5
    # ... and a damaged .amat is caught by that checksum
    amat = folder / "binarized_mnist_test.amat"
    text = bytearray(amat.read_bytes())
    text[0] = ord("1") if text[0] == ord("0") else ord("0")
    amat.write_bytes(bytes(text))
    with pytest.raises(VaelabError, match=r"uncompressed sha256 .* expected e6687bfea3f8"):
        load_dataset(DataConfig(name="binarized_mnist"), root=tmp_path)


def test_unreadable_mat_file_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(VaelabError) as exc:
        parse_frey(b"MATLAB 5.0 MAT-file, but nothing else", "frey_rawface.mat")
    assert "frey_rawface.mat is not a readable MATLAB file" in one_line(exc)
    from scipy.io import savemat

    path = tmp_path / "other.mat"
    savemat(path, {"ff": np.zeros((10, 3), np.uint8)})
    with pytest.raises(VaelabError, match=r"variable ff of shape \(560, N\)"):
        parse_frey(path.read_bytes(), "other.mat")


def test_idx_parser_checks_magic_dims_and_length() -> None:
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2, 3, 4))
    good = header + bytes(range(24))
    assert parse_idx(good, "x", 3).shape == (2, 3, 4)
    with pytest.raises(VaelabError, match=r"magic number 2051, expected 2049"):
        parse_idx(good, "x", 1)
    with pytest.raises(VaelabError, match=r"holds 23 data bytes but its header \(2, 3, 4\) says 24"):
        parse_idx(good[:-1], "x", 3)
    with pytest.raises(VaelabError, match="not an IDX file"):
        parse_idx(b"\x00", "x", 3)
    with pytest.raises(VaelabError, match="ends inside its IDX header"):
        parse_idx(header[:9], "x", 3)


def test_amat_parser_rejects_other_text() -> None:
    line = (" ".join(["0"] * 783 + ["1"]) + "\n").encode()
    assert parse_amat(line * 2, "a").shape == (2, 1, 28, 28)
    assert parse_amat(line, "a")[0, 0, 27, 27] == 1
    for bad in (line[:-1], line.replace(b"0 0", b"0,0", 1), line.replace(b"1\n", b"2\n"), b""):
        with pytest.raises(VaelabError, match="is not binarized-MNIST .amat text"):
            parse_amat(bad, "a")


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(VaelabError) as exc:
        load_dataset(DataConfig(name="mnits"))
    msg = one_line(exc)
    assert "unknown dataset 'mnits'" in msg
    for name in ("mnist", "binarized_mnist", "frey", "digits", "cifar10", "folder:PATH", "npy:PATH"):
        assert name in msg


# ----------------------------------------------------------------------------- splits and binarization


def indexed(n: int, labels: bool = True) -> ImageSplits:
    """n images whose single pixel holds their own index (as a fraction), to track where they go."""
    x = (np.arange(n, dtype=np.float32) / n).reshape(n, 1, 1, 1)
    return ImageSplits(train=x, train_labels=np.arange(n) if labels else None)


def ids(x: torch.Tensor | None, n: int) -> set[int]:
    return set() if x is None else {round(v * n) for v in x.flatten().tolist()}


@pytest.mark.parametrize(("valid_size", "n_valid"), [(0.1, 100), (0.25, 250), (37, 37), (1, 1), (0, 0)])
def test_validation_split_sizes_and_disjointness(valid_size: float, n_valid: int) -> None:
    b = finish("t", indexed(1000), DataConfig(valid_size=valid_size, binarize="none"))
    assert len(b.train) == 1000 - n_valid and (b.valid is None if n_valid == 0 else len(b.valid) == n_valid)
    tr, va = ids(b.train, 1000), ids(b.valid, 1000)
    assert not tr & va and tr | va == set(range(1000))
    assert b.train_labels.tolist() == sorted(tr)  # labels travel with their images, file order kept


def test_validation_split_depends_on_split_seed_only() -> None:
    a = finish("t", indexed(1000), DataConfig(valid_size=0.1, split_seed=0, binarize="none"))
    b = finish("t", indexed(1000), DataConfig(valid_size=0.1, split_seed=0, binarize="none"))
    c = finish("t", indexed(1000), DataConfig(valid_size=0.1, split_seed=1, binarize="none"))
    assert torch.equal(a.valid, b.valid) and ids(a.valid, 1000) != ids(c.valid, 1000)


def test_test_carve_is_fixed_and_disjoint() -> None:
    s = indexed(1000)
    s.test_fraction = 0.2
    a = finish("t", s, DataConfig(valid_size=0.1, split_seed=0, binarize="none"))
    b = finish("t", s, DataConfig(valid_size=0.1, split_seed=3, binarize="none"))
    assert len(a.test) == 200 and len(a.valid) == 80 and len(a.train) == 720
    assert torch.equal(a.test, b.test)
    tr, va, te = ids(a.train, 1000), ids(a.valid, 1000), ids(a.test, 1000)
    assert not (tr & va or tr & te or va & te) and tr | va | te == set(range(1000))


def test_valid_size_too_large_is_an_error() -> None:
    with pytest.raises(VaelabError, match=r"data.valid_size=1000 leaves no training examples out of 1000"):
        finish("t", indexed(1000), DataConfig(valid_size=1000))


def test_limit_keeps_the_first_training_examples() -> None:
    full = finish("t", indexed(1000), DataConfig(valid_size=0.1, binarize="none"))
    b = finish("t", indexed(1000), DataConfig(valid_size=0.1, binarize="none", limit=50))
    assert torch.equal(b.train, full.train[:50]) and torch.equal(b.train_labels, full.train_labels[:50])
    assert torch.equal(b.valid, full.valid)


def grey(n: int = 400) -> ImageSplits:
    rng = np.random.default_rng(1)
    return ImageSplits(
        train=rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8),
        test=rng.integers(0, 256, (100, 1, 6, 6), dtype=np.uint8),
    )


def test_fixed_binarization_is_deterministic_in_split_seed() -> None:
    s = grey()
    a = finish("g", s, DataConfig(binarize="fixed", split_seed=0))
    b = finish("g", s, DataConfig(binarize="fixed", split_seed=0))
    c = finish("g", s, DataConfig(binarize="fixed", split_seed=1))
    assert a.spec.values == "binary"
    for x in (a.train, a.valid, a.test):
        assert torch.equal(x, (x > 0.5).float())
    assert torch.equal(a.train, b.train) and torch.equal(a.valid, b.valid) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)
    # The test draw is its own stream: limit and valid_size do not move it.
    d = finish("g", s, DataConfig(binarize="fixed", split_seed=0, limit=10, valid_size=0.3))
    assert torch.equal(a.test, d.test)
    # ... and equals the public helper's draw, so evaluation can reproduce it from grey levels.
    g = finish("g", s, DataConfig(binarize="none"))
    assert torch.equal(binarize(g.test, "fixed", 0, "test"), a.test)


def test_fixed_binarization_is_bernoulli_of_the_grey_level() -> None:
    # E[x_bin] = p: over 40,000 pixels at p = 0.3 the mean is within 4 standard errors (seeded).
    s = ImageSplits(train=np.full((1000, 1, 8, 5), 0.3, np.float32))
    b = finish("p", s, DataConfig(binarize="fixed", valid_size=0))
    se = (0.3 * 0.7 / b.train.numel()) ** 0.5
    assert abs(float(b.train.mean()) - 0.3) < 4 * se


def test_threshold_dynamic_and_none() -> None:
    s = grey()
    none = finish("g", s, DataConfig(binarize="none"))
    thr = finish("g", s, DataConfig(binarize="threshold"))
    dyn = finish("g", s, DataConfig(binarize="dynamic"))
    assert none.spec.values == "continuous" and thr.spec.values == "binary" and dyn.spec.values == "binary"
    assert torch.equal(thr.train, (none.train > 0.5).float())
    assert torch.equal(dyn.train, none.train)  # the batcher draws; the loader does not
    assert dyn.dynamic and not thr.dynamic and not none.dynamic
    # evaluation sees the test set binarized once, exactly as binarize="fixed" would
    fixed = finish("g", s, DataConfig(binarize="fixed"))
    assert torch.equal(dyn.eval_images("test"), fixed.test) and torch.equal(thr.eval_images(), thr.test)
    assert torch.equal(none.test * 255, torch.from_numpy(s.test.astype(np.float32)))


@pytest.mark.datasets("frey")
def test_copy_to_tmp_preserves_verification(tmp_path: Path, data_root: Path) -> None:
    # A real copy (not a link) verifies, and the in-process cache does not hide a later change.
    folder = tmp_path / "freyface"
    folder.mkdir()
    shutil.copy(data_root / "freyface" / "frey_rawface.mat", folder)
    read_file(get_dataset("frey"), "frey_rawface.mat", tmp_path)
    data = bytearray((folder / "frey_rawface.mat").read_bytes())
    data[-1] ^= 0xFF
    (folder / "frey_rawface.mat").write_bytes(bytes(data))
    os.utime(folder / "frey_rawface.mat", ns=(1, 1))
    with pytest.raises(VaelabError, match="is corrupt"):
        read_file(get_dataset("frey"), "frey_rawface.mat", tmp_path)
