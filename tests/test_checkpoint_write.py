"""A checkpoint write that fails (disk full, permission denied) at any point is one line naming the
folder, and leaves the checkpoints written before, and the ``latest`` pointer, exactly as they were."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

from vaelab.cli import main
from vaelab.config import TrainConfig
from vaelab.models import build_model
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec
from vaelab.train import Checkpointer, TensorBatches, Trainer, dynamic_binarize
from vaelab.train import checkpoint as ckpt

SPEC = DataSpec((1, 4, 4), "binary")
ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _trainer(run_dir: Path, **train) -> Trainer:
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=2, hidden=[8]), SPEC)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 32, "log_every": 2, "seed": 0, **train})
    data = torch.rand(160, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    train_b = TensorBatches(data[:128], 32, seed=0, transform=dynamic_binarize)
    valid = TensorBatches(data[128:].bernoulli(generator=torch.Generator().manual_seed(1)), 32, shuffle=False)
    return Trainer(model, cfg, train_b, valid, run_dir=run_dir, callbacks=[Checkpointer(2)],
                   meta={"model": {"name": "vae"}})


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_save_file(monkeypatch, nth: int) -> None:
    """safetensors' save_file fails on its ``nth`` call (1: the weights, 2: the trainer state),
    leaving a partial file behind, as a full disk does."""
    real, calls = st.save_file, {"n": 0}

    def save_file(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == nth:
            Path(path).write_bytes(b"\0" * 7)
            raise ENOSPC
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file)


def _fail_replace(monkeypatch, dst_name: str) -> None:
    """os.replace fails when it would put a newly written file or folder at a path named ``dst_name``."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == dst_name and ".tmp-" in Path(src).name:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _fail_state_json(monkeypatch) -> None:
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name == "state.json":
            raise ENOSPC
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


FAILURES = {
    "weights": (lambda mp: _fail_save_file(mp, 1), "No space left on device"),
    "trainer-state": (lambda mp: _fail_save_file(mp, 2), "No space left on device"),
    "state.json": (_fail_state_json, "No space left on device"),
    "rename-into-place": (lambda mp: _fail_replace(mp, "step_00000006"), "Permission denied"),
    "latest-pointer": (lambda mp: _fail_replace(mp, "latest"), "Permission denied"),
}


@pytest.mark.parametrize("where", FAILURES)
def test_a_failed_write_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch, where):
    t = _trainer(tmp_path, max_steps=4)
    t.fit()
    checkpoints = tmp_path / "checkpoints"
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000004"
    before = _snapshot(checkpoints)
    fail, why = FAILURES[where]
    fail(monkeypatch)
    t.step = 6
    with pytest.raises(ckpt.CheckpointWriteError) as exc:
        t.save_checkpoint()
    monkeypatch.undo()
    msg = str(exc.value)
    assert "\n" not in msg and f"could not write checkpoint step_00000006 in {checkpoints} ({why})" in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no chain of exceptions
    assert _snapshot(checkpoints) == before  # no new folder, no leftovers, `latest` untouched
    fresh = _trainer(tmp_path / "other")
    fresh.load_checkpoint(tmp_path)
    assert fresh.step == 4


def test_a_failed_replacement_of_best_puts_the_old_one_back(tmp_path, monkeypatch):
    t = _trainer(tmp_path, max_steps=4, eval_every=2)
    t.fit()
    best = tmp_path / "checkpoints" / "best"
    before = _snapshot(best)
    _fail_replace(monkeypatch, "best")  # the old best is moved aside, then the new one fails to land
    t.best_valid = float("inf")
    with pytest.raises(ckpt.CheckpointWriteError, match=r"could not write checkpoint best in .*Permission"):
        t._save_best()
    monkeypatch.undo()
    assert _snapshot(best) == before
    names = sorted(p.name for p in best.parent.iterdir())
    assert names == ["best", "latest", "step_00000002", "step_00000004"]


def test_a_failed_write_during_fit_stops_without_a_final_checkpoint(tmp_path, monkeypatch):
    t = _trainer(tmp_path, max_steps=8)
    _fail_save_file(monkeypatch, 4)  # step 2's checkpoint and step 4's best are written, then step 4's fails
    with pytest.raises(ckpt.CheckpointWriteError, match="step_00000004"):
        t.fit()
    assert t.failure and "step_00000004" in t.failure
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000002"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    _fail_save_file(monkeypatch, 3)  # step 4's checkpoint is written; the best one, at step 8, is not
    out = tmp_path / "run"
    smoke = str(ROOT / "configs" / "smoke_vae_digits.toml")
    assert main(["train", smoke, "--out", str(out), "--quiet", "--set", "train.checkpoint_every=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("training vae on digits"), err
    assert err[1] == (
        f"error: could not write checkpoint best in {out / 'checkpoints'} (No space left on device); the "
        "checkpoints written before are unchanged; free disk space or fix the folder's permissions and resume"
    )
    assert ckpt.resolve_checkpoint(out).name == "step_00000004"
