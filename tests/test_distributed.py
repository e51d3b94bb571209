"""Data-parallel training: each rank's own random stream, collectives on the group's device, and a
real two-process run (gloo, CPU) whose ranks end with the same weights and stop after the same step."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from vaelab.config import TrainConfig
from vaelab.models import build_model
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec
from vaelab.train import Checkpointer, TensorBatches, Trainer, dynamic_binarize
from vaelab.train import checkpoint as ckpt
from vaelab.train.batching import batch_seed
from vaelab.train.loop import collective_device, noise_seed

SPEC = DataSpec((1, 4, 4), "binary")


@pytest.mark.parametrize("levels", [False, True], ids=["float-probabilities", "8-bit-levels"])
def test_two_ranks_draw_different_binarisations_of_the_same_images(levels):
    # every row is the same grey image, so both shards hold the same images
    grey = torch.full((64, 1, 4, 4), 128 / 255 if levels else 0.5)
    ranks = [TensorBatches(grey, 8, seed=5, transform=dynamic_binarize, rank=r, world=2) for r in (0, 1)]
    assert (ranks[0].data.dtype == torch.uint8) == levels
    b0, b1 = (list(tb.epoch(3)) for tb in ranks)
    assert len(b0) == len(b1) == 4
    for x0, x1 in zip(b0, b1):
        assert set(x0.unique().tolist()) == {0.0, 1.0} and not torch.equal(x0, x1)
    # each rank's stream is a pure function of (seed, epoch, batch, rank): a resumed epoch, or the
    # batcher built again, draws the same numbers
    again = TensorBatches(grey, 8, seed=5, transform=dynamic_binarize, rank=1, world=2)
    assert all(torch.equal(a, b) for a, b in zip(b1[2:], again.epoch(3, start=2)))
    # rank 0 draws what a single-process run draws
    alone = TensorBatches(grey[::2], 8, seed=5, transform=dynamic_binarize, shuffle=False)
    assert batch_seed(5, 3, 1, 0) == batch_seed(5, 3, 1) != batch_seed(5, 3, 1, 1)
    x_alone = list(alone.epoch(3))
    assert all(torch.equal(a, b) for a, b in zip(b0, x_alone))


@pytest.mark.parametrize("backend,expected", [("nccl", "cuda:1"), ("gloo", "cpu")])
def test_collectives_run_on_the_process_groups_device(monkeypatch, backend, expected):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    assert collective_device(torch.device("cuda", 1)) == torch.device(expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One process of a two-process run: trains, validates, and writes what the test compares."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = build_model(VAEConfig(latent_dim=2, hidden=[8]), SPEC)
        torch.manual_seed(0)  # every rank one stream, as experiment.prepare leaves them: fit splits it
        # rank 1 asks to stop at once (its own time limit); rank 0 learns it at the next agreed step
        cfg = TrainConfig(epochs=4, batch_size=8, log_every=3, eval_every=2, seed=0,
                          time_limit_min=1e-9 if rank == 1 else 0)
        data = torch.rand(160, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        levels = torch.round(data * 255) / 255
        train = TensorBatches(levels[:128], 8, seed=0, transform=dynamic_binarize, rank=rank, world=world)
        valid_x = data[128:].bernoulli(generator=torch.Generator().manual_seed(1))
        valid = TensorBatches(valid_x, 4, shuffle=False, rank=rank, world=world)
        run_dir = Path(out) / "run"
        trainer = Trainer(model, cfg, train, valid, run_dir=run_dir, callbacks=[Checkpointer()],
                          meta={"model": {"name": "vae"}})
        draws: list[list[float]] = []  # the first normals each step's loss would draw (eps)
        loss = model.loss

        def peeking(batch):
            if model.training:  # a training step, not validation
                g = torch.Generator()
                g.set_state(torch.get_rng_state())
                draws.append(torch.randn(4, generator=g).tolist())
            return loss(batch)

        model.loss = peeking
        trainer.fit()
        metrics = trainer.evaluate(valid)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out) / f"w{rank}.st"))
        facts = {"step": trainer.step, "stop_reason": trainer.stop_reason, "valid": metrics,
                 "steps_per_epoch": trainer.steps_per_epoch, "draws": draws}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(facts))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_run_keeps_the_ranks_in_step(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # 64 rows a rank, 8 batches an epoch; rank 1's stop request is shared at step 3 (log_every)
    assert r0["steps_per_epoch"] == r1["steps_per_epoch"] == 8
    assert r0["step"] == r1["step"] == 3
    assert r1["stop_reason"].startswith("time limit") and r0["stop_reason"] == "stopped on another process"
    # the validation metrics are reduced over both shards: every rank holds the same numbers
    assert r0["valid"] == r1["valid"] and all(v == v for v in r0["valid"].values())
    # each rank draws its own noise in the same step, a pure function of (seed, step, rank)
    assert len(r0["draws"]) == len(r1["draws"]) == 3
    for step, (d0, d1) in enumerate(zip(r0["draws"], r1["draws"], strict=True)):
        assert d0 != d1
        for rank, d in ((0, d0), (1, d1)):
            expected = torch.randn(4, generator=torch.Generator().manual_seed(noise_seed(0, step, rank)))
            assert d == expected.tolist()
    w0, w1 = (load_file(str(tmp_path / f"w{r}.st")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    # rank 0 alone wrote the checkpoints: the final one holds the weights both ranks ended with
    c = ckpt.load_checkpoint(tmp_path / "run")
    assert c.meta["step"] == 3 and all(torch.equal(c.model_state[k], w0[k]) for k in w0)
