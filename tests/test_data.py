"""The loaders on the real files in $VAELAB_DATA (shared/data): checksums, shapes, counts, values.

Numbers come from shared/data/README.md. Each test names the datasets it reads
(``@pytest.mark.datasets``): when VAELAB_DATA is set (CI), a missing file fails the test; without it,
the test is skipped with the command that fetches the files (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data import DATASETS, TEST_SPLIT_SEED, file_status, get_dataset, load_dataset, read_file

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(data_root: Path):
    """Full MNIST as grey levels, no validation carve: loaded once for this module."""
    return load_dataset(DataConfig(name="mnist", binarize="none", valid_size=0), root=data_root)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.datasets(n)) for n, d in DATASETS.items() if d.files]
)
def test_every_registered_file_is_present_and_verified(data_root: Path, name: str) -> None:
    ds = get_dataset(name)
    for f in ds.files:
        status = file_status(ds, f, data_root)
        assert status.state == "present" and status.verified, f"{f.name}: {status.state} {status.detail}"


@pytest.mark.datasets("mnist")
def test_mnist_shapes_values_and_label_counts(mnist) -> None:
    assert mnist.train.shape == (60000, 1, 28, 28) and mnist.test.shape == (10000, 1, 28, 28)
    assert mnist.train.dtype == torch.float32 and mnist.valid is None
    assert mnist.spec.shape == (1, 28, 28) and mnist.spec.n_classes == 10
    assert (mnist.spec.kind, mnist.spec.values) == ("images", "continuous")
    assert float(mnist.train.min()) == 0.0 and float(mnist.train.max()) == 1.0
    assert abs(float(mnist.train.mean()) - 0.1307) < 5e-5
    # grey levels are k / 255 exactly
    k = mnist.test[:100] * 255
    assert torch.equal(k, k.round())
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.train_labels.dtype == torch.int64
    assert mnist.class_names == [str(d) for d in range(10)]


@pytest.mark.datasets("mnist")
def test_mnist_validation_split_is_seeded_and_partitions_the_training_set(data_root: Path, mnist) -> None:
    b = load_dataset(DataConfig(name="mnist", binarize="none", valid_size=0.1, split_seed=7), root=data_root)
    assert len(b.train) == 54000 and len(b.valid) == 6000 and torch.equal(b.test, mnist.test)
    counts = torch.bincount(b.train_labels, minlength=10) + torch.bincount(b.valid_labels, minlength=10)
    assert counts.tolist() == MNIST_TRAIN_COUNTS
    # Both parts keep file order: the validation images are the full set's rows at the seeded indices.
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(7))
    held = perm[:6000].sort().values
    assert torch.equal(b.valid, mnist.train[held])
    kept = torch.ones(60000, dtype=torch.bool)
    kept[held] = False
    assert torch.equal(b.train, mnist.train[kept])


@pytest.mark.datasets("mnist")
def test_mnist_dynamic_is_grey_levels_marked_binary(data_root: Path, mnist) -> None:
    b = load_dataset(DataConfig(name="mnist", binarize="dynamic", valid_size=0, limit=500), root=data_root)
    assert b.spec.values == "binary" and len(b.train) == 500
    assert torch.equal(b.train, mnist.train[:500]) and torch.equal(b.test, mnist.test)
    assert torch.equal(b.train_labels, mnist.train_labels[:500])


@pytest.mark.datasets("binarized_mnist")
def test_binarized_mnist(data_root: Path) -> None:
    b = load_dataset(DataConfig(name="binarized_mnist", binarize="none"), root=data_root)
    assert b.train.shape == (50000, 1, 28, 28) and b.valid.shape == (10000, 1, 28, 28)
    assert b.test.shape == (10000, 1, 28, 28)
    assert b.spec.values == "binary" and b.train_labels is None and b.spec.n_classes == 0
    for x, mean in ((b.train, 0.1306), (b.valid, 0.1311), (b.test, 0.1325)):
        assert torch.equal(x, (x > 0.5).float())  # values in {0, 1}
        assert abs(float(x.mean()) - mean) < 5e-5


@pytest.mark.datasets("frey")
def test_frey(data_root: Path) -> None:
    b = load_dataset(DataConfig(name="frey", binarize="none", valid_size=0.1), root=data_root)
    assert b.spec.shape == (1, 28, 20) and b.spec.values == "continuous"
    assert len(b.train) + len(b.valid) + len(b.test) == 1965
    assert len(b.test) == round(0.1 * 1965)
    every = torch.cat([b.train, b.valid, b.test])
    # observed grey levels 8..238 (README)
    assert abs(float(every.min()) * 255 - 8) < 1e-4 and abs(float(every.max()) * 255 - 238) < 1e-4
    # The test set is fixed (TEST_SPLIT_SEED); split_seed moves only the validation set.
    other = load_dataset(
        DataConfig(name="frey", binarize="none", valid_size=0.1, split_seed=5), root=data_root
    )
    assert torch.equal(other.test, b.test) and not torch.equal(other.valid, b.valid)
    assert TEST_SPLIT_SEED == 0


@pytest.mark.datasets("frey")
def test_frey_frames_are_columns_of_ff(data_root: Path) -> None:
    from scipy.io import loadmat

    ff = loadmat(data_root / "freyface" / "frey_rawface.mat")["ff"]  # (560, 1965): one frame per column
    expected = {ff[:, i].reshape(28, 20).tobytes() for i in range(ff.shape[1])}
    b = load_dataset(DataConfig(name="frey", binarize="none", valid_size=0), root=data_root)
    frames = (torch.cat([b.train, b.test]) * 255).round().to(torch.uint8).numpy()
    assert {f[0].tobytes() for f in frames} == expected


def test_digits_needs_no_files(tmp_path: Path) -> None:
    b = load_dataset(DataConfig(name="digits", binarize="none", valid_size=0.1), root=tmp_path / "empty")
    assert len(b.train) + len(b.valid) + len(b.test) == 1797
    assert len(b.test) == round(0.2 * 1797)
    assert b.spec.shape == (1, 8, 8) and b.spec.n_classes == 10
    every = torch.cat([b.train, b.valid, b.test]) * 16
    assert torch.equal(every, every.round()) and float(every.max()) == 16.0
    labels = torch.cat([b.train_labels, b.valid_labels, b.test_labels])
    assert labels.bincount().sum() == 1797 and labels.max() == 9


@pytest.mark.datasets("cifar10")
def test_cifar10_labels_and_class_names(data_root: Path) -> None:
    # The full decode takes ~10 s; the checksum test covers the bytes, this covers the layout.
    data = read_file(get_dataset("cifar10"), "cifar10.npz", data_root)
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        assert np.bincount(z["y_test"]).tolist() == [1000] * 10
        assert z["y_train"][:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
        assert list(z["class_names"])[:3] == ["airplane", "automobile", "bird"]
