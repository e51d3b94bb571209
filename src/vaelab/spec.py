"""What a model needs to know about its data, without the data: saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import prod

from vaelab.errors import VaelabError

__all__ = ["DataSpec", "KINDS", "IMAGE_VALUES"]

KINDS = ("images", "tokens", "waveforms", "codes")
"""The kinds of data a dataset declares: images (or flat vectors) (C, H, W); token sequences of
variable length; waveforms; maps of discrete codes (with labels, e.g. a prior's training data)."""

IMAGE_VALUES = ("binary", "continuous")


@dataclass(frozen=True)
class DataSpec:
    """Shape and kind of one example.

    shape: the event shape of one example, e.g. (1, 28, 28) for MNIST (channels first); for token
        sequences (max_length,), the longest sequence (words and ``<eos>``); for waveforms
        (max_samples,), the longest clip; for codes (H', W'), the code map.
    kind: one of :data:`KINDS` - ``images``, ``tokens``, ``waveforms`` or ``codes``.
    values: for images, ``binary`` (values in {0, 1}) or ``continuous`` (values in [0, 1]);
        empty for the other kinds.
    n_classes: number of labels when the dataset has them (0 otherwise).
    extra: kind-specific facts, JSON-serialisable (for ``tokens``: ``vocab`` (the words, index =
        token id), ``pad_id``, ``unk_id``, ``bos_id``, ``eos_id``; for ``waveforms``: ``sample_rate``
        (Hz) and ``labels``, label set name -> the names of its values; for ``codes``:
        ``codebook_size``, the number K of code values).

    Specs written before ``kind`` named the data kind had ``kind`` ``binary`` or ``continuous``:
    both are read as images with those values (in :meth:`from_dict` and in the constructor).
    """

    shape: tuple[int, ...]
    kind: str = "images"
    n_classes: int = 0
    extra: dict = field(default_factory=dict)
    values: str = ""

    def __post_init__(self) -> None:
        if self.kind in IMAGE_VALUES:  # the spelling of old checkpoints: the values of images
            object.__setattr__(self, "values", self.kind)
            object.__setattr__(self, "kind", "images")
        if self.kind not in KINDS:
            raise VaelabError(f"data kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "images" and not self.values:
            object.__setattr__(self, "values", "continuous")
        if self.kind == "images" and self.values not in IMAGE_VALUES:
            raise VaelabError(f"image values {self.values!r} are not one of {', '.join(IMAGE_VALUES)}")

    @property
    def n_dims(self) -> int:
        return prod(self.shape)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (``tokens`` only; 0 otherwise)."""
        return len(self.extra.get("vocab", ()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(
            shape=tuple(d["shape"]),
            kind=d.get("kind", "continuous"),
            n_classes=d.get("n_classes", 0),
            extra=dict(d.get("extra", {})),
            values=d.get("values", ""),
        )
