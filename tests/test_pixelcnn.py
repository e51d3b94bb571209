"""The Gated PixelCNN's autoregressive structure, held by gradients, and its likelihood and sampler.

Causality: for a random network (float64), the logits at raster position i have exactly zero
gradient with respect to the embedded input at every position >= i and nonzero gradient at every
position < i (so no blind spot either). The likelihood is normalised (it sums to 1 over every code
map of a tiny map), and a network trained briefly on structured code maps samples that structure.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from vaelab.pixelcnn import GatedPixelCNN

DT = torch.float64


def _net(seed=0, **kw) -> GatedPixelCNN:
    torch.manual_seed(seed)
    args = {"n_codes": 5, "channels": 8, "layers": 5, "kernel": 3} | kw
    return GatedPixelCNN(**args).to(DT)


def _dependence(net, codes, labels=None) -> torch.Tensor:
    """(H*W, H*W) matrix: [p, q] = sum |d logits at raster position p / d embedded input at q|.

    One backward pass: the map is repeated once per position p, and copy p's loss is the logits
    at p (copies are independent examples of the batch)."""
    _, height, width = codes.shape
    n = height * width
    x = net.embedding(codes).permute(0, 3, 1, 2).detach().expand(n, -1, -1, -1).clone().requires_grad_()
    logits = net.forward_embedded(x, None if labels is None else labels.expand(n))
    weights = torch.randn(logits.shape[1], dtype=DT, generator=torch.Generator().manual_seed(1))
    at_p = torch.eye(n, dtype=DT).reshape(n, 1, height, width)  # copy p: the logits at position p
    (grad,) = torch.autograd.grad((logits * weights[:, None, None] * at_p).sum(), x)
    return grad.abs().sum(1).flatten(1)


@pytest.mark.parametrize("n_classes", [0, 3])
@pytest.mark.parametrize("kernel", [3, 5])
def test_logits_depend_on_exactly_the_earlier_positions(n_classes, kernel):
    net = _net(n_classes=n_classes, kernel=kernel)
    codes = torch.randint(0, 5, (1, 5, 5), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1]) if n_classes else None
    dep = _dependence(net, codes, labels)
    n = dep.shape[0]
    future = torch.ones(n, n, dtype=torch.bool).triu()  # q >= p: the position itself and later ones
    assert (dep[future] == 0).all(), "a logit depends on its own or a later position"
    # every earlier position reaches every later one (5 layers of reach >= 1 cover a 5 x 5 map)
    assert (dep[~future] > 0).all(), "a logit misses an earlier position"


def test_no_blind_spot_to_the_upper_right():
    # A stack of masked 3x3 convolutions never sees the positions up and to the right beyond a
    # diagonal; the two-stack network sees all of them, e.g. the top-right corner from the bottom row.
    net = _net(layers=8)
    height, width = 4, 9
    codes = torch.randint(0, 5, (1, height, width), generator=torch.Generator().manual_seed(3))
    dep = _dependence(net, codes)
    last = (height - 1) * width  # the first position of the last row
    seen = dep[last].reshape(height, width)
    assert (seen[: height - 1] > 0).all()  # every position of every row above, right edge included
    assert (seen[height - 1] == 0).all()
    assert (dep[-1, :-1] > 0).all() and dep[-1, -1] == 0  # the last position sees all before it


def test_one_layer_receptive_field_is_the_two_stack_shape():
    # one layer, k = 3: rows i-2, i-1 at columns j-1..j+1 (vertical stack, shifted down) and (i, j-1)
    net = _net(layers=1)
    codes = torch.randint(0, 5, (1, 5, 5), generator=torch.Generator().manual_seed(4))
    seen = _dependence(net, codes)[3 * 5 + 3].reshape(5, 5) > 0
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:3, 2:5] = True
    expected[3, 2] = True
    assert torch.equal(seen, expected)


def test_first_layer_excludes_the_centre_and_later_layers_include_it():
    net = _net()
    x = torch.randn(1, 8, 5, 5, dtype=DT, generator=torch.Generator().manual_seed(5))
    for index, centre_seen in [(0, False), (1, True)]:
        v = x.clone().requires_grad_()
        h = x.clone().requires_grad_()
        _, h_out, skip = net.layers[index](v, h)
        gv, gh = torch.autograd.grad((h_out[0, :, 2, 2].sum() + skip[0, :, 2, 2].sum()), (v, h))
        assert (gv[0, :, 2:].abs().sum() == 0)  # the vertical stack reaches h only from rows above
        assert (gh[0, :, 2, 2].abs().sum() > 0) == centre_seen
        assert gh[0, :, 2, 3:].abs().sum() == 0 and gh[0, :, 3:].abs().sum() == 0
        assert gh[0, :, 2, 1].abs().sum() > 0  # the left neighbour is seen by both mask types


def test_class_conditioning_changes_the_output():
    net = _net(n_classes=3)
    codes = torch.randint(0, 5, (2, 4, 4), generator=torch.Generator().manual_seed(6))
    a = net(codes, torch.tensor([0, 0]))
    b = net(codes, torch.tensor([2, 2]))
    assert (a - b).abs()[:, :, 0, 0].min() > 0  # even the first position, which sees no code
    assert (a - b).abs().mean() > 1e-3
    # unconditional: the first position's logits are the same whatever the codes
    u = _net()
    out = u(codes)
    assert torch.allclose(out[0, :, 0, 0], out[1, :, 0, 0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="class-conditional"):
        net(codes)
    with pytest.raises(ValueError, match="unconditional"):
        u(codes, torch.tensor([0, 1]))


def test_log_prob_is_the_summed_cross_entropy():
    net = _net(n_classes=2)
    codes = torch.randint(0, 5, (3, 4, 6), generator=torch.Generator().manual_seed(7))
    labels = torch.tensor([0, 1, 1])
    lp = net.log_prob(codes, labels)
    ce = F.cross_entropy(net(codes, labels), codes, reduction="none")
    assert lp.shape == (3,)
    assert torch.allclose(lp, -ce.sum((1, 2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label", [None, 0, 1])
def test_log_prob_is_normalised_over_every_map(label):
    # a 2 x 2 map with K = 3: the 81 maps' probabilities sum to 1 only if each conditional sees
    # just the positions before it
    net = _net(n_codes=3, n_classes=0 if label is None else 2)
    maps = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)
    labels = None if label is None else torch.full((len(maps),), label)
    total = torch.logsumexp(net.log_prob(maps, labels), 0)
    assert abs(total.item()) < 1e-12


def test_sample_returns_valid_codes():
    net = _net(n_classes=2).float()
    out = net.sample(3, (3, 4), labels=torch.tensor([0, 1, 0]), temperature=0.7)
    assert out.shape == (3, 3, 4) and out.dtype == torch.long and not out.requires_grad
    assert out.min() >= 0 and out.max() < 5
    with pytest.raises(ValueError, match="temperature"):
        net.sample(1, (2, 2), labels=torch.tensor([0]), temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_follow_the_model_distribution(temperature):
    # 2 x 2 maps, K = 3: the frequencies of the 81 maps match prod_i softmax(logits_i / T)[c_i]
    net = _net(n_codes=3, channels=6, layers=2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)  # sharper conditionals than at initialisation, so order mistakes show
    maps = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)
    logp = torch.log_softmax(net(maps) / temperature, dim=1).gather(1, maps[:, None]).flatten(1).sum(1)
    torch.manual_seed(11)
    n = 20_000
    out = net.sample(n, (2, 2), temperature=temperature)
    index = (out.flatten(1) * torch.tensor([27, 9, 3, 1])).sum(1)  # the row of `maps` each sample is
    freq = torch.bincount(index, minlength=81).to(DT) / n
    probs = logp.exp()
    assert abs(probs.sum().item() - 1) < 1e-12
    sd = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 5 * sd + 2e-4).all()


def _train(net, batches, steps, lr=2e-2):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        codes, labels = batches()
        loss = -net.log_prob(codes, labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_trained_on_constant_maps_it_samples_constant_maps():
    torch.manual_seed(0)
    k = 4
    net = GatedPixelCNN(k, channels=8, layers=2)
    g = torch.Generator().manual_seed(8)

    def batches():
        return torch.randint(0, k, (32, 1, 1), generator=g).expand(32, 3, 3).contiguous(), None

    loss = _train(net, batches, steps=150)
    assert loss < torch.log(torch.tensor(float(k))).item() + 0.1  # the first code's entropy, ~ nothing after
    torch.manual_seed(1)
    out = net.sample(200, (3, 3))
    constant = (out == out[:, :1, :1]).flatten(1).all(1)
    assert constant.float().mean() > 0.95
    counts = torch.bincount(out[:, 0, 0], minlength=k)
    assert (counts > 20).all()  # every value appears: it learnt the uniform first code


def test_trained_on_one_pattern_per_class_it_samples_the_class_pattern():
    torch.manual_seed(0)
    k, n_classes = 5, 3
    patterns = torch.randint(0, k, (n_classes, 4, 4), generator=torch.Generator().manual_seed(9))
    net = GatedPixelCNN(k, channels=16, layers=2, n_classes=n_classes)
    g = torch.Generator().manual_seed(10)

    def batches():
        labels = torch.randint(0, n_classes, (32,), generator=g)
        return patterns[labels], labels

    _train(net, batches, steps=100)
    torch.manual_seed(1)
    labels = torch.arange(n_classes).repeat(20)
    out = net.sample(len(labels), (4, 4), labels)
    assert (out == patterns[labels]).flatten(1).all(1).float().mean() > 0.95
