"""The AP corpus of David Blei's lda-c (``<root>/ap/{ap.dat,vocab.txt}``): a text corpus for LDA.

It is registered like every dataset, so ``vaelab data list`` shows it (present, verified) and
``vaelab data download ap`` fetches it, but it holds word counts, not images: it is read by
:func:`load_ap` (``vaelab lda ap``), and training an image model on it is refused
with a message that says so. Formats and sources: ../shared/data/README.md, section 7.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import ImageSplits
from .registry import DataFile, Dataset, data_root, register_dataset

if TYPE_CHECKING:
    from vaelab.vi.corpus import Corpus

__all__ = ["AP", "AP_FILES", "AP_SHA256", "load_ap", "resolve_corpus"]

_GITHUB = "https://raw.githubusercontent.com"
AP_FILES = (
    DataFile(
        "ap.dat",
        1_926_191,
        "c9b946b6cdb2c6e876198ae227afb573df023db84fb53a9d2b31c0d59224fea1",
        (f"{_GITHUB}/ghazifkirii/hLDA/826cba5cc1c198fa545ad59b62e73100d716e678/ap/ap.dat",),
    ),
    DataFile(
        "vocab.txt",
        85_532,
        "fbf0d0f836cb2b0360bd3cae0f71c2f34b140b1dd8dd0d0bdb618a64704337f6",
        (f"{_GITHUB}/cjrd/SimpleLDA-R/ad7d1aa56dc12485ddf95a2f8b759d840448c4f3/data/vocab.txt",),
    ),
)


def _not_images(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> ImageSplits:
    raise VaelabError(
        "dataset 'ap' is a text corpus (word counts of 2,246 news articles), not images; "
        "fit topic models to it with `vaelab lda ap`, or pick an image dataset for data.name"
    )


AP = register_dataset(
    Dataset(
        name="ap",
        description="AP news of lda-c (Blei et al. 2003): 2246 documents, 10473 terms, for `vaelab lda`",
        folder="ap",
        files=AP_FILES,
        loader=_not_images,
    )
)
AP_SHA256 = {f.name: f.sha256 for f in AP_FILES}


def load_ap(root: str | Path | None = None) -> Corpus:
    """The AP corpus of lda-c from ``<root>/ap/{ap.dat,vocab.txt}`` (root: :func:`data_root`), sha256-checked.

    Shape: 2246 documents, 10473 terms, 435838 tokens (``vaelab.vi.corpus.AP_SHAPE``).
    """
    from vaelab.vi.corpus import load_ldac

    folder = (Path(root) if root is not None else data_root()) / "ap"
    for fname in AP_SHA256:
        if not (folder / fname).is_file():
            raise VaelabError(
                f"AP corpus file not found: {folder / fname}; run `vaelab data download ap`, or set "
                "VAELAB_DATA to the folder holding ap/ap.dat and ap/vocab.txt (Blei's lda-c ap.tgz)"
            )
    return load_ldac(folder / "ap.dat", folder / "vocab.txt", sha256=AP_SHA256, name="ap")


def resolve_corpus(spec: str, *, root: str | Path | None = None) -> Corpus:
    """``ap`` (the AP corpus under the data root), a path to an lda-c ``.dat`` file (vocab.txt beside it),
    or a plain text file with one document per line."""
    from vaelab.vi.corpus import load_ldac, load_text

    if spec == "ap":
        return load_ap(root)
    path = Path(spec)
    if not path.exists():
        raise VaelabError(
            f"corpus {spec!r} not found: give 'ap', an lda-c .dat file with vocab.txt beside it, "
            "or a text file with one document per line"
        )
    if path.suffix == ".dat":
        return load_ldac(path)
    return load_text(path)
