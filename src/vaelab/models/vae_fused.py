"""The training step of the MLP VAE as one autograd node: its ELBO and the gradient, derived by hand.

``fused_elbo`` returns what ``estimators.elbo_diag_gaussian`` returns for ``vaelab.models.vae.VAE``
(the same values, the same random draw, and the same gradients up to the order of float additions),
but instead of ~40 autograd nodes and ~110 tensor operations per step it records one node: the
forward pass keeps what the backward pass needs, and the backward pass is the chain rule written
out layer by layer (matrix products, the activations' derivative kernels, and the likelihood's
gradient with respect to the decoder output, computed in the forward pass, where its inputs are at
hand). On the CPU, where a 128-image MNIST step takes about 4 ms, that saves about 0.25 ms per step
(BENCHMARKS.md, section 2).

The three outputs (loss, reconstruction, KL) are all differentiable, so anything built on them
(``elbo = reconstruction - kl``, a user's extra term) gets exact gradients too. The fused step
applies only where it is the same computation as the modules': ``plan`` checks that both networks
are plain ``MLP`` stacks (linear layers with biases and the activations of ``vaelab.nn.ACTIVATIONS``;
a parametrized layer has another type) without hooks, and that neither a ``torch.compile`` trace
(a compiled loss traces the modules instead) nor autocast is running. ``VAELAB_NO_FUSED=1`` switches
it off (``ENABLED``), for comparison and debugging.

Shapes: x (B, D); eps (S, B, Dz); the decoder output (S, B, P, D) for a head with P parameters per
dimension.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _module

from vaelab.distributions import LikelihoodHead
from vaelab.divergences import DiagonalGaussianKL
from vaelab.nn import MLP, InputLinear, _input_linear, _input_linear_weight_grad

__all__ = ["ENABLED", "Plan", "plan", "fusable", "fused_elbo"]

ENABLED = not os.environ.get("VAELAB_NO_FUSED")
"""Whether the VAE trains through ``fused_elbo`` where it applies (``VAELAB_NO_FUSED=1``: never)."""

ATen = torch.ops.aten


# ----------------------------------------------------------------------------- activations
# For each activation module: forward(a) -> h (it may overwrite a, which is not kept when the
# derivative needs only h) and backward(grad_h, a, h) -> grad_a, from the derivative kernels that
# autograd itself calls.
Act = tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor | None, Tensor], Tensor], bool]


def _activation(m: nn.Module) -> Act | None:
    """(forward, backward, needs the pre-activation) for a module, or None when it is not known.
    Settings (a slope, an alpha) are read at each call, as the module itself would."""
    kind = type(m)
    if kind is nn.ReLU:
        return (lambda a: a.relu_()), (lambda g, a, h: ATen.threshold_backward(g, h, 0)), False
    if kind is nn.Tanh:
        return (lambda a: a.tanh_()), (lambda g, a, h: ATen.tanh_backward(g, h)), False
    if kind is nn.LeakyReLU and m.negative_slope > 0:  # (the output determines the input's sign)
        return ((lambda a: F.leaky_relu(a, m.negative_slope, inplace=True)),
                (lambda g, a, h: ATen.leaky_relu_backward(g, h, m.negative_slope, True)), False)
    if kind is nn.ELU and m.alpha >= 0:
        return ((lambda a: F.elu(a, m.alpha, inplace=True)),
                (lambda g, a, h: ATen.elu_backward(g, m.alpha, 1, 1, True, h)), False)
    if kind is nn.Softplus:
        return ((lambda a: F.softplus(a, m.beta, m.threshold)),
                (lambda g, a, h: ATen.softplus_backward(g, a, m.beta, m.threshold)), True)
    if kind is nn.GELU:
        return ((lambda a: F.gelu(a, approximate=m.approximate)),
                (lambda g, a, h: ATen.gelu_backward(g, a, approximate=m.approximate)), True)
    if kind is nn.SiLU:
        return (lambda a: F.silu(a)), (lambda g, a, h: ATen.silu_backward(g, a)), True
    return None


class _Structure(NamedTuple):
    modules: tuple[nn.Module, ...]  # what it was read from: the MLP's children, in order
    linears: tuple[nn.Module, ...]
    acts: tuple[Act, ...]


_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, _Structure] = weakref.WeakKeyDictionary()


def _structure(mlp: nn.Module, first_may_be_sparse: bool) -> _Structure | None:
    """The linear layers and activations of a plain MLP (linear, act, linear, ..., linear), or None.
    Read once per set of children (replacing a layer reads it again)."""
    if not isinstance(mlp, nn.Sequential) or type(mlp).forward not in (nn.Sequential.forward, MLP.forward):
        return None  # (a subclass with its own forward computes something else)
    modules = tuple(mlp._modules.values())
    known = _STRUCTURES.get(mlp)
    if known is None or known.modules != modules:
        known = _read(modules, first_may_be_sparse)
        _STRUCTURES[mlp] = known
    return known if known.linears else None


def _read(modules: tuple[nn.Module, ...], first_may_be_sparse: bool) -> _Structure:
    none = _Structure(modules, (), ())
    if len(modules) % 2 == 0:
        return none
    linears, acts = [], []
    for i, m in enumerate(modules):
        if i % 2 == 0:
            if not (type(m) is nn.Linear or (type(m) is InputLinear and i == 0 and first_may_be_sparse)):
                return none  # (a parametrized layer has another type)
            linears.append(m)
        else:
            act = _activation(m)
            if act is None:
                return none
            acts.append(act)
    return _Structure(modules, tuple(linears), tuple(acts))


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks)


def _autocast() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


class Plan(NamedTuple):
    """What the fused step reads from the two networks, for one step."""

    params: tuple[Tensor, ...]  # weight, bias of every layer: the encoder's, then the decoder's
    enc_acts: tuple[Act, ...]
    dec_acts: tuple[Act, ...]
    sparse_first: bool  # the encoder's first layer is an InputLinear
    max_density: float
    latent: int


def plan(encoder: nn.Module, decoder: nn.Module) -> Plan | None:
    """The plan of the fused step when it computes exactly what these two networks would, else None:
    both plain MLPs, no hooks, every layer with a bias, no compile trace and no autocast running."""
    if not ENABLED or _global_hooks() or torch.compiler.is_compiling() or _autocast():
        return None
    enc, dec = _structure(encoder, True), _structure(decoder, False)
    if enc is None or dec is None or _hooked(encoder) or _hooked(decoder):
        return None
    if any(_hooked(m) for m in enc.modules + dec.modules):
        return None
    params = []
    for lin in enc.linears + dec.linears:
        p = lin._parameters
        if p.get("bias") is None:
            return None
        params += (p["weight"], p["bias"])
    first = enc.linears[0]
    sparse = type(first) is InputLinear
    return Plan(tuple(params), enc.acts, dec.acts, sparse, first.max_density if sparse else 0.0,
                params[len(enc.linears) * 2 - 2].shape[0] // 2)


def fusable(encoder: nn.Module, decoder: nn.Module) -> bool:
    """Whether ``fused_elbo`` applies to these two networks (see ``plan``)."""
    return plan(encoder, decoder) is not None


# ----------------------------------------------------------------------------- the step
def fused_elbo(x: Tensor, plan: Plan, head: LikelihoodHead, n_samples: int, kl_weight: float
               ) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, reconstruction, kl) of the ELBO with the analytic KL, as in ``elbo_diag_gaussian``:
    loss = mean_b(kl_weight * kl_b - reconstruction_b), reconstruction_b = mean_s log p(x_b | z_sb),
    kl_b = KL(q(z|x_b) || N(0, I)), z = mu + sigma * eps. x: (B, D); ``plan`` from ``plan()``."""
    ref = plan.params[0]
    # drawn where elbo_diag_gaussian draws it (the encoder takes no random numbers), so both paths
    # see the same eps
    eps = torch.randn((n_samples, x.shape[0], plan.latent), dtype=ref.dtype, device=ref.device)
    return _FusedElbo.apply(x, eps, _Spec(plan, head, float(kl_weight)), *plan.params)


class _Spec:
    """The non-tensor inputs of the fused step."""

    __slots__ = ("plan", "head", "kl_weight", "n_enc")

    def __init__(self, plan: Plan, head: LikelihoodHead, kl_weight: float):
        self.plan, self.head, self.kl_weight = plan, head, kl_weight
        self.n_enc = 2 * (len(plan.enc_acts) + 1)  # encoder parameters


def _mlp_forward(h: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], acts: Sequence[Act],
                 first: Tensor | None = None) -> tuple[Tensor, list[Tensor], list[Tensor | None]]:
    """Output, each layer's input, and each activation's input where its derivative needs it.
    ``first``: the first layer's output when it was already computed (the sparse input layer)."""
    inputs: list[Tensor] = []
    pre: list[Tensor | None] = []
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases)):
        inputs.append(h)
        a = first if i == 0 and first is not None else torch.addmm(b, h, w.t())
        if i == last:
            return a, inputs, pre
        fwd, _, keep = acts[i]
        pre.append(a if keep else None)
        h = fwd(a)
    raise AssertionError("unreachable")


def _mlp_backward(grad: Tensor, weights: Sequence[Tensor], inputs: Sequence[Tensor],
                  pre: Sequence[Tensor | None], acts: Sequence[Act], need: Sequence[bool],
                  need_input: bool, first_weight_grad: Callable[[Tensor], Tensor] | None = None):
    """Gradients (weight, bias per layer, in order) and the input's gradient (or None).
    ``need``: per parameter (2 per layer) whether its gradient is wanted."""
    grads: list[Tensor | None] = [None] * (2 * len(weights))
    for i in range(len(weights) - 1, -1, -1):
        if need[2 * i]:
            grads[2 * i] = (first_weight_grad(grad) if i == 0 and first_weight_grad is not None
                            else torch.mm(grad.t(), inputs[i]))
        if need[2 * i + 1]:
            grads[2 * i + 1] = grad.sum(0)
        if i == 0 and not need_input:
            return grads, None
        grad_in = torch.mm(grad, weights[i])
        if i == 0:
            return grads, grad_in
        _, bwd, _ = acts[i - 1]
        grad = bwd(grad_in, pre[i - 1], inputs[i])
    raise AssertionError("unreachable")


class _FusedElbo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, eps: Tensor, spec: _Spec, *params: Tensor):
        ctx.set_materialize_grads(False)
        plan, n_enc = spec.plan, spec.n_enc
        enc_w, enc_b = params[0:n_enc:2], params[1:n_enc:2]
        dec_w, dec_b = params[n_enc::2], params[n_enc + 1 :: 2]
        s, b, latent = eps.shape
        x = x.contiguous()

        # encoder; its first layer reads x without the zeros where InputLinear would
        index, first = None, None
        if plan.sparse_first:
            first, index = _input_linear(x, enc_w[0], enc_b[0], plan.max_density)
        out, enc_in, enc_pre = _mlp_forward(x, enc_w, enc_b, plan.enc_acts, first)
        mu, logvar = out[:, :latent], out[:, latent:]
        std = torch.exp(0.5 * logvar)
        z = torch.addcmul(mu, std, eps)  # (S, B, Dz)
        var = std.square()
        kl = DiagonalGaussianKL.to_standard_normal(mu, logvar)  # Kingma & Welling App. B

        # decoder and the likelihood, with its gradient with respect to the decoder output
        params_out, dec_in, dec_pre = _mlp_forward(z.reshape(s * b, latent), dec_w, dec_b, plan.dec_acts)
        d = x.shape[1]
        log_px, d_out = spec.head.log_prob_and_grad(params_out.view(s, b, -1, d), x, (d,))
        reconstruction = log_px.squeeze(0) if s == 1 else log_px.mean(0)
        loss = (spec.kl_weight * kl - reconstruction).mean()

        ctx.spec, ctx.index = spec, index
        ctx.enc_pre, ctx.dec_pre = enc_pre, dec_pre  # None where the derivative needs only the output
        ctx.save_for_backward(eps, mu, std, var, d_out, *enc_in, *dec_in, *params)
        ctx.n_in = (len(enc_in), len(dec_in))
        return loss, reconstruction, kl

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss: Tensor | None, g_rec: Tensor | None, g_kl: Tensor | None):
        spec = ctx.spec
        eps, mu, std, var, d_out, *rest = ctx.saved_tensors
        n_ei, n_di = ctx.n_in
        enc_in, dec_in, params = rest[:n_ei], rest[n_ei : n_ei + n_di], rest[n_ei + n_di :]
        n_enc = spec.n_enc
        need = ctx.needs_input_grad[3:]
        s, b, latent = eps.shape

        # per-example weights of d reconstruction_b and d kl_b in the total derivative
        w_rec = w_kl = None
        if g_loss is not None:
            w_rec, w_kl = -g_loss / b, g_loss * (spec.kl_weight / b)
        if g_rec is not None:
            w_rec = g_rec if w_rec is None else g_rec + w_rec
        if g_kl is not None:
            w_kl = g_kl if w_kl is None else g_kl + w_kl

        # decoder: d out = (w_rec_b / S) d log p / d out
        if w_rec is not None:
            scale = w_rec / s  # (not in place: a second backward, retain_graph=True, reads d_out again)
            d_out = d_out * (scale if scale.dim() == 0 else scale.view(1, b, *([1] * (d_out.dim() - 2))))
            grads_dec, dz = _mlp_backward(d_out.view(s * b, -1), params[n_enc::2], dec_in, ctx.dec_pre,
                                          spec.plan.dec_acts, need[n_enc:], need_input=True)
            dz = dz.view(s, b, latent)
        else:
            grads_dec, dz = [None] * (len(params) - n_enc), None

        # the reparameterisation z = mu + std * eps and the KL: d out = [d mu, d logvar]
        if dz is not None:
            d_mu = dz.squeeze(0) if s == 1 else dz.sum(0)
            d_logvar = (dz * eps).squeeze(0) if s == 1 else (dz * eps).sum(0)
            d_logvar.mul_(std).mul_(0.5)
        else:
            d_mu, d_logvar = torch.zeros_like(mu), torch.zeros_like(mu)
        if w_kl is not None:
            w = w_kl if w_kl.dim() == 0 else w_kl.unsqueeze(1)
            d_mu.add_(w * mu)
            d_logvar.add_(w * 0.5 * (var - 1))
        d_enc = torch.cat([d_mu, d_logvar], 1)

        # encoder; the first layer's weight gradient as InputLinear's (without the zeros of x where
        # the forward pass read them so)
        first = None
        if spec.plan.sparse_first:
            def first(grad: Tensor) -> Tensor:
                return _input_linear_weight_grad(enc_in[0], ctx.index, grad)
        grads_enc, d_x = _mlp_backward(d_enc, params[0:n_enc:2], enc_in, ctx.enc_pre, spec.plan.enc_acts,
                                       need[:n_enc], ctx.needs_input_grad[0], first_weight_grad=first)
        return d_x, None, None, *grads_enc, *grads_dec
