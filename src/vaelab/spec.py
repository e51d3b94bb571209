"""What a model needs to know about its data, without the data: saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import prod


@dataclass(frozen=True)
class DataSpec:
    """Shape and kind of one example.

    shape: the event shape of one example, e.g. (1, 28, 28) for MNIST (channels first).
    kind: ``binary`` (values in {0, 1}), ``continuous`` (values in [0, 1]), or for later families
        ``tokens`` / ``audio``.
    n_classes: number of labels when the dataset has them (0 otherwise).
    extra: family-specific facts (e.g. vocabulary size), JSON-serialisable.
    """

    shape: tuple[int, ...]
    kind: str = "continuous"
    n_classes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def n_dims(self) -> int:
        return prod(self.shape)

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
        )
