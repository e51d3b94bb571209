"""The CUDA path: a train step, the IS evaluation against the CPU's, checkpoints written on the GPU read
on the CPU, the binariser, and the collectives of a one-process nccl group.

Marked ``cuda``: skipped only when no GPU is visible to PyTorch (``benchmarks/gpu_check.sh`` runs them
on a GPU machine: ``pytest -m cuda``).
"""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist

from vaelab.config import TrainConfig
from vaelab.evaluation.likelihood import importance_sampled_log_likelihood
from vaelab.models import build_model
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec
from vaelab.train import Checkpointer, TensorBatches, Trainer, dynamic_binarize
from vaelab.train import checkpoint as ckpt

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU is visible to PyTorch"),
]

SPEC = DataSpec((1, 8, 8), "binary")
CUDA = torch.device("cuda")


def _grey(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Images of exact 8-bit grey levels k/255, (n, 1, 8, 8), as files give them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *SPEC.shape), generator=g).float() / 255


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(VAEConfig(latent_dim=4, hidden=[32]), SPEC)


def _trainer(model, device, run_dir=None, **train) -> Trainer:
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 32, "log_every": 2, "seed": 0, **train})
    data = _grey()
    batches = TensorBatches(data[:192], 32, seed=0, transform=dynamic_binarize, device=device)
    valid_x = data[192:].bernoulli(generator=torch.Generator().manual_seed(1))
    valid = TensorBatches(valid_x, 32, shuffle=False, device=device)
    callbacks = [Checkpointer()] if run_dir is not None else []
    return Trainer(model.to(device), cfg, batches, valid, run_dir=run_dir, callbacks=callbacks,
                   meta={"model": {"name": "vae"}})


def test_a_train_step_on_cuda_changes_the_weights_and_stays_finite():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = _trainer(model, CUDA, max_steps=3)
    t.fit()
    assert t.step == 3 and all(p.device.type == "cuda" for p in model.parameters())
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)
    metrics = t.evaluate(t.valid_batches)
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0


def test_is_evaluation_on_cuda_matches_the_cpu_on_the_same_weights():
    model = _model()
    _trainer(model, torch.device("cpu"), max_steps=40).fit()
    x = _grey(100, seed=3).bernoulli(generator=torch.Generator().manual_seed(4))
    # the decoder is deterministic: the same z gives the same logits on both devices
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(5))
    cpu_logits = model.decode(z).base_dist.logits
    gpu = _model()
    gpu.load_state_dict(model.state_dict())
    gpu = gpu.to(CUDA).eval()
    gpu_logits = gpu.decode(z.to(CUDA)).base_dist.logits.cpu()
    torch.testing.assert_close(gpu_logits, cpu_logits, rtol=1e-4, atol=1e-4)
    # the estimate is random: CUDA and CPU must differ by no more than two CPU runs with other seeds
    runs = []
    for device, seed in (("cpu", 0), ("cpu", 1), ("cuda", 0)):
        torch.manual_seed(seed)
        m = model if device == "cpu" else gpu
        runs.append(importance_sampled_log_likelihood(m, [x.to(device)], k=500).log_px.double())
    noise = (runs[0] - runs[1]).abs().mean().item()
    assert (runs[2] - runs[0]).abs().mean().item() < 3 * noise + 1e-3
    assert abs(runs[2].mean().item() - runs[0].mean().item()) < 3 * noise + 1e-3


def test_a_checkpoint_written_on_cuda_loads_and_resumes_on_the_cpu(tmp_path):
    model = _model()
    t = _trainer(model, CUDA, run_dir=tmp_path, max_steps=4)
    t.fit()
    c = ckpt.load_checkpoint(tmp_path, with_trainer_state=True)
    assert c.meta["step"] == 4 and all(v.device.type == "cpu" for v in c.model_state.values())
    cpu_model = _model(seed=9)
    ckpt.load_model_weights(cpu_model, c)
    for k, v in model.state_dict().items():
        assert torch.equal(cpu_model.state_dict()[k], v.cpu()), k
    resumed = _trainer(_model(seed=9), torch.device("cpu"), max_steps=6)
    resumed.fit(resume=tmp_path)  # optimizer state and step, saved from the GPU, go on on the CPU
    assert resumed.step == 6 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


@pytest.mark.parametrize("levels", [True, False], ids=["8-bit-levels", "float-probabilities"])
def test_the_binariser_on_cuda_is_exact_and_a_pure_function_of_its_seed(levels):
    p = torch.full((400, 1, 8, 8), 77 / 255)
    data = p if levels else p + 1e-3  # not a level: the float path
    tb = TensorBatches(data, 100, seed=2, transform=dynamic_binarize, device=CUDA)
    assert (tb.data.dtype == torch.uint8) == levels
    batches = list(tb.epoch(1))
    x = torch.cat(batches)
    assert x.device.type == "cuda" and set(x.unique().tolist()) == {0.0, 1.0}
    mean = float(p[0, 0, 0, 0]) + (0 if levels else 1e-3)
    assert abs(x.mean().item() - mean) < 4 * math.sqrt(mean * (1 - mean) / x.numel())
    again = list(TensorBatches(data, 100, seed=2, transform=dynamic_binarize, device=CUDA).epoch(1, start=2))
    assert all(torch.equal(a, b) for a, b in zip(batches[2:], again))
    other_rank = next(TensorBatches(data, 100, seed=2, transform=dynamic_binarize, device=CUDA,
                                    rank=1, world=1).epoch(1))
    assert not torch.equal(other_rank, batches[0])


def test_a_one_process_nccl_group_trains_and_reduces_on_the_gpu():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.cuda.set_device(0)
        t = _trainer(_model(), CUDA, max_steps=4, eval_every=2)
        assert t.distributed
        t.fit()  # DDP, the stop reduction (every 2 steps) and validation, all through nccl
        assert t.step == 4 and t.stop_reason is None
        alone = _trainer(_model(), CUDA, max_steps=1)
        alone.model.load_state_dict(t.model.state_dict())
        torch.manual_seed(0)
        reduced = t.evaluate(t.valid_batches)
        torch.manual_seed(0)
        local = {k: v.item() / n for k, v, n in _sums(alone)}
        assert reduced.keys() == local.keys()
        for k in reduced:
            assert reduced[k] == pytest.approx(local[k], rel=1e-5, abs=1e-5), k
    finally:
        dist.destroy_process_group()


def _sums(t: Trainer):
    from vaelab.evaluation.metrics import loss_term_sums

    sums, count = loss_term_sums(t.model, t.valid_batches.epoch(0))
    return [(k, v, count) for k, v in sums.items()]
