import pytest

from vaelab.config import apply_overrides, config_from_dict, load_config, parse_overrides
from vaelab.errors import VaelabError


def test_presets_load(tmp_path):
    from pathlib import Path

    presets = sorted(Path("configs").glob("*.toml"))
    assert presets
    for p in presets:
        cfg = load_config(p)
        assert cfg.model.name and cfg.train.epochs >= 1


def test_overrides_are_typed():
    cfg = load_config(
        "configs/vae_digits.toml",
        [
            "train.epochs=1",
            "model.hidden=[16, 8]",
            "train.lr=3e-4",
            "data.binarize=none",
            "train.compile=true",
        ],
    )
    assert cfg.train.epochs == 1 and cfg.model.hidden == [16, 8] and cfg.train.lr == 3e-4
    assert cfg.data.binarize == "none" and cfg.train.compile is True
    assert parse_overrides(["a.b.c=word"]) == {"a": {"b": {"c": "word"}}}
    assert apply_overrides({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}}


@pytest.mark.parametrize(
    "data,message",
    [
        ({"model": {"name": "vae", "latnet_dim": 2}}, "unknown config key model.latnet_dim"),
        (
            {"model": {"name": "vae"}, "train": {"epochs": "ten"}},
            "train.epochs must be an integer, got 'ten'",
        ),
        ({"model": {"name": "vae"}, "train": {"lr": True}}, "train.lr must be a number"),
        ({"model": {"name": "vae", "latent_dim": -1}}, "model.latent_dim must be a positive integer"),
        ({"model": {"name": "vae", "hidden": [10, "a"]}}, r"model.hidden\[1\] must be an integer"),
        ({"model": {"name": "vae", "likelihood": "poisson"}}, "model.likelihood must be one of 'bernoulli'"),
        ({"model": {"name": "nope"}}, "unknown model 'nope'"),
        ({"model": {}}, "no model.name"),
        ({"model": {"name": "vae"}, "trian": {}}, r"unknown config section \[trian\]"),
        ({"corpus": "ap", "topics": 20}, "'corpus' is a top-level setting, not a section"),
        ({"model": {"name": "vae"}, "data": {"valid_size": -0.1}}, "data.valid_size must be >= 0"),
        ({"model": {"name": "vae"}, "train": {"batch_size": 0}}, "train.batch_size must be >= 1"),
        ({"model": {"name": "vae"}, "train": {"ema_decay": 1.0}}, r"train.ema_decay must be in \[0, 1\)"),
        ({"model": {"name": "vae"}, "train": {"ema_every": 0}}, "train.ema_every must be >= 1"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(VaelabError, match=message):
        config_from_dict(data)


def test_bad_files(tmp_path):
    with pytest.raises(VaelabError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1")
    with pytest.raises(VaelabError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(VaelabError, match="--set needs key=value"):
        parse_overrides(["train.epochs"])
