"""A small WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio"): an
autoregressive model of a sequence of 8-bit mu-law levels, conditioned locally (a feature vector per
sample) and globally (a vector per sequence), with a mixture of discretized logistics per sample.

Network (Sections 2.1-2.5 of the paper):

* input: the previous sample x_{t-1} (its level mapped to [-1, 1]; 0 before the first), a 1x1
  convolution to C channels. The shift by one is the only place the present sample is hidden, so
  every later layer may look at its own position;
* ``layers`` gated layers l with dilation d_l = 2^(l mod ``cycle``), each
      a = W_l *_{d_l} h + U_l c_t + V_l s        (2C channels; kernel 2, causal, dilated)
      g = tanh(a_1) * sigmoid(a_2)               (eq. 2; ``vaelab.pixelcnn.gate``)
      skip += S_l g,   h <- h + R_l g           (Section 2.4's residual and skip connections)
  with c_t the local conditioning at sample t and s the global one;
* output: relu, 1x1, relu, 1x1 to ``3 M`` parameters per sample: the mixture's logits, locations
  and log-scales (Salimans et al. 2017, PixelCNN++, Section 2.1, over the 256 levels k / 255).

The receptive field is 2 + sum_l d_l samples (the current input, the shift, and each layer's reach).
Training is one parallel pass over the sequence (teacher forcing); ``generate`` samples one step at a
time, keeping for each layer a queue of its last d_l inputs (the "fast WaveNet" caching), so a step
costs O(layers) whatever the receptive field. It computes exactly what the parallel pass computes
(tested), so the likelihood that was trained is the one sampled from.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical

from vaelab.distributions import DiscretizedLogistic
from vaelab.pixelcnn import gate

__all__ = ["WaveNet", "LogisticMixture", "shift_right", "levels_to_inputs"]


def levels_to_inputs(levels: Tensor) -> Tensor:
    """Levels k / 255 in [0, 1] (any shape) -> the network's input scale 2 k / 255 - 1 in [-1, 1]."""
    return 2.0 * levels - 1.0


def shift_right(x: Tensor) -> Tensor:
    """(B, T) -> (B, T): position t holds x_{t-1}, position 0 holds 0."""
    return F.pad(x, (1, 0))[..., :-1]


class LogisticMixture:
    """A mixture of M discretized logistics over the 256 levels k / 255, from a network's output of
    3 M parameters per position, laid out [logits (M), locations (M), raw log-scales (M)] along the
    channel axis (dim 1 of (B, 3M, T), or the last axis of (B, 3M) in ``generate``).

    Offsets so that an untrained network (outputs near 0) starts sensibly: every location at
    0.5 + a fixed spread (the components start apart, not on top of each other), and the log-scale
    at log(0.05) (about 13 levels), bounded softly below by ``min_log_scale``."""

    def __init__(self, components: int, min_log_scale: float = -9.0, init_log_scale: float = math.log(0.05)):
        self.m = components
        self.min_log_scale = min_log_scale
        self.init_log_scale = init_log_scale

    @property
    def params(self) -> int:
        return 3 * self.m

    def split(self, out: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
        """out with 3M along ``dim`` -> logits, loc, log_scale, each with M along ``dim``."""
        logits, loc, raw = out.split(self.m, dim=dim)
        spread = torch.linspace(-0.3, 0.3, self.m, device=out.device, dtype=out.dtype) if self.m > 1 \
            else out.new_zeros(1)
        shape = [1] * out.dim()
        shape[dim] = self.m
        loc = 0.5 + spread.view(shape) + loc
        log_scale = self.min_log_scale + F.softplus(raw + self.init_log_scale - self.min_log_scale)
        return logits, loc, log_scale

    def log_prob(self, out: Tensor, levels: Tensor) -> Tensor:
        """log P(levels): out (B, 3M, T), levels (B, T) of values k / 255 -> (B, T) nats."""
        logits, loc, log_scale = self.split(out, 1)
        comp = DiscretizedLogistic(loc, log_scale).log_prob(levels.unsqueeze(1))  # (B, M, T)
        return torch.logsumexp(comp + F.log_softmax(logits, dim=1), dim=1)

    def sample(self, out: Tensor, temperature: float = 1.0) -> Tensor:
        """One draw per row: out (B, 3M) -> levels (B,) of values k / 255. ``temperature`` < 1
        sharpens the choice of component and shrinks the logistic's scale (1 is the model)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        logits, loc, log_scale = self.split(out, -1)
        k = Categorical(logits=logits / temperature, validate_args=False).sample().unsqueeze(-1)
        mu, ls = loc.gather(-1, k).squeeze(-1), log_scale.gather(-1, k).squeeze(-1)
        return DiscretizedLogistic(mu, ls + math.log(temperature)).sample()  # scale times temperature


class WaveNet(nn.Module):
    """The network of the module docstring.

    channels: C, the residual channels. skip: channels of the skip sum and output layers.
    layers / cycle: the gated layers and the period of their dilations 1, 2, ..., 2^(cycle - 1).
    cond_channels: channels of the local conditioning c (B, cond_channels, T); 0 for none.
    global_dim: size of the global conditioning s (B, global_dim); 0 for none.
    out_channels: parameters per sample.

    Every convolution of a WaveNet is a 1x1 convolution or, for the dilated kernel-2 one, a 1x1
    convolution of two time-shifted copies; they are computed here as matrix products over the
    channels of a (B, T, channels) layout: layer l's pre-activation is one linear map of
    [h_{t-d}; h_t; c_t] (2C + cond_channels -> 2C), and its residual and skip outputs one map
    C -> C + skip. The same function as the convolutions, in fewer and larger matrix products.
    """

    def __init__(self, channels: int, skip: int, layers: int, cycle: int, cond_channels: int,
                 global_dim: int, out_channels: int):
        super().__init__()
        self.channels, self.skip_channels, self.cond_channels = channels, skip, cond_channels
        self.dilations = [2 ** (i % cycle) for i in range(layers)]
        self.input = nn.Linear(1, channels)
        self.dilated = nn.ModuleList(nn.Linear(2 * channels + cond_channels, 2 * channels)
                                     for _ in self.dilations)
        self.globl = nn.Linear(global_dim, layers * 2 * channels, bias=False) if global_dim else None
        # residual (C) and skip (skip) outputs of each gated layer; the last one's residual is unused
        self.post = nn.ModuleList(nn.Linear(channels, (channels if i < layers - 1 else 0) + skip)
                                  for i in range(layers))
        self.out1 = nn.Linear(skip, skip)
        self.out2 = nn.Linear(skip, out_channels)

    @property
    def receptive_field(self) -> int:
        """Samples x_{t-r+1..t} that can change the output at t, counting the shifted input."""
        return 2 + sum(self.dilations)

    def _global(self, glob: Tensor | None) -> Tensor | None:
        """V s for every layer: (B, layers, 2C), or None."""
        if self.globl is None or glob is None:
            return None
        return self.globl(glob).view(glob.shape[0], len(self.dilations), 2 * self.channels)

    def _head(self, skip: Tensor) -> Tensor:
        return self.out2(torch.relu(self.out1(torch.relu(skip))))

    def forward(self, previous: Tensor, cond: Tensor | None = None, glob: Tensor | None = None) -> Tensor:
        """Teacher forcing: previous (B, T) the inputs x_{t-1} in [-1, 1] (``shift_right`` of the
        sequence), cond (B, cond_channels, T), glob (B, global_dim) -> (B, out_channels, T)."""
        b, t = previous.shape
        h = self.input(previous.unsqueeze(-1))  # (B, T, C)
        c_t = cond.transpose(1, 2) if cond is not None and self.cond_channels else None  # (B, T, Cc)
        g = self._global(glob)
        skip: Tensor | int = 0
        c = self.channels
        for i, d in enumerate(self.dilations):
            past = F.pad(h, (0, 0, d, 0))[:, :t]  # h_{t-d}, 0 before the start
            parts = [past, h] if c_t is None else [past, h, c_t]
            a = self.dilated[i](torch.cat(parts, -1))  # (B, T, 2C)
            if g is not None:
                a = a + g[:, None, i]
            gated = gate(a, dim=-1)
            out = self.post[i](gated)
            skip = skip + out[..., -self.skip_channels:]
            if i < len(self.dilations) - 1:
                h = h + out[..., :c]
        assert isinstance(skip, Tensor)
        return self._head(skip).transpose(1, 2)

    @torch.no_grad()
    def generate(self, width: int, draw: Callable[[Tensor], Tensor], cond: Tensor | None = None,
                 glob: Tensor | None = None, batch: int | None = None, teacher: Tensor | None = None,
                 keep_outputs: bool = False, chunk: int = 256) -> tuple[Tensor, Tensor | None]:
        """Ancestral sampling, one sample at a time: -> (values (B, width) in [-1, 1] as fed back,
        the outputs (B, out_channels, width) when ``keep_outputs`` else None).

        draw: the output (B, out_channels) of a step -> the next input (B,) in [-1, 1].
        cond (B, cond_channels, >= width) / glob (B, global_dim): as ``forward``; ``batch`` gives B
        when neither does. teacher (B, width): feed these values instead of the draws (then the
        outputs equal ``forward(shift_right(teacher), ...)``, which the tests check).
        chunk: samples whose conditioning terms are computed at once (memory B x layers x 2C x chunk).
        """
        ref = next(self.parameters())
        if cond is not None:
            b = cond.shape[0]
        elif glob is not None:
            b = glob.shape[0]
        elif batch is not None:
            b = batch
        else:
            raise ValueError("generate needs cond, glob or batch to know how many sequences to draw")
        c = self.channels
        queues = [ref.new_zeros(d, b, c) for d in self.dilations]  # each layer's last d inputs
        w_in, b_in = self.input.weight[:, 0], self.input.bias
        w_past = [lin.weight[:, :c] for lin in self.dilated]
        w_now = [lin.weight[:, c:2 * c] for lin in self.dilated]
        w_cond = [lin.weight[:, 2 * c:] for lin in self.dilated]
        values = ref.new_zeros(b, width)
        outputs = ref.new_zeros(b, self.out2.out_features, width) if keep_outputs else None
        x = ref.new_zeros(b)
        g = self._global(glob)  # (B, L, 2C) or None
        use_cond = cond is not None and self.cond_channels > 0
        for start in range(0, width, chunk):
            stop = min(width, start + chunk)
            # the terms that do not depend on the samples: biases, U_l c_t and V_l s, (T, L, B, 2C)
            bias = torch.stack([lin.bias.expand(b, stop - start, -1) for lin in self.dilated], 2)
            if use_cond:
                assert cond is not None
                c_t = cond[..., start:stop].transpose(1, 2)
                bias = bias + torch.stack([F.linear(c_t, w) for w in w_cond], 2)
            if g is not None:
                bias = bias + g[:, None]
            bias = bias.permute(1, 2, 0, 3).contiguous()
            for t in range(start, stop):
                h = torch.addcmul(b_in, x[:, None], w_in)  # (B, C)
                skip: Tensor | int = 0
                for i, d in enumerate(self.dilations):
                    slot = t % d
                    past = queues[i][slot].clone()
                    queues[i][slot] = h
                    a = torch.addmm(bias[t - start, i], past, w_past[i].T).addmm_(h, w_now[i].T)
                    gated = gate(a, dim=-1)
                    out = self.post[i](gated)
                    skip = skip + out[:, -self.skip_channels:]
                    if i < len(self.dilations) - 1:
                        h = h + out[:, :c]
                assert isinstance(skip, Tensor)
                out = self._head(skip)
                if outputs is not None:
                    outputs[:, :, t] = out
                drawn = draw(out)
                values[:, t] = drawn
                x = teacher[:, t] if teacher is not None else drawn
        return values, outputs
