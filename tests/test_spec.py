"""DataSpec: the declared data kind, and specs written by earlier versions."""

import pytest

from vaelab.errors import VaelabError
from vaelab.spec import KINDS, DataSpec


def test_round_trip_every_kind():
    for kind in KINDS:
        spec = DataSpec(shape=(3, 4), kind=kind, n_classes=2, extra={"vocab": ["<pad>", "a"]})
        assert DataSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("old", ["binary", "continuous"])
def test_old_checkpoint_specs_load_as_images(old):
    # what checkpoints written before DataSpec.kind named the data kind hold
    saved = {"shape": [1, 28, 28], "kind": old, "n_classes": 10, "extra": {}}
    spec = DataSpec.from_dict(saved)
    assert spec.kind == "images" and spec.values == old and spec.shape == (1, 28, 28)
    assert DataSpec.from_dict(spec.to_dict()) == spec


def test_spec_without_kind_is_continuous_images():
    spec = DataSpec.from_dict({"shape": [4]})
    assert (spec.kind, spec.values) == ("images", "continuous")


def test_tokens_have_no_pixel_values_and_count_their_vocabulary():
    spec = DataSpec(shape=(12,), kind="tokens", extra={"vocab": ["<pad>", "<unk>", "<bos>", "<eos>", "a"]})
    assert spec.values == "" and spec.vocab_size == 5


def test_unknown_kind_is_one_line_error():
    with pytest.raises(VaelabError, match="'video' is not one of images, tokens, waveforms, codes"):
        DataSpec(shape=(2,), kind="video")
