"""``freeze()`` for any reduction: the widened quantitative net keeps the function, its copies drift apart, the
random numbers come from the generator given, and the Parameters (and an optimizer holding them) survive."""

import io

import pytest
import torch
import torch.nn.functional as F

from glai import GLAIMLP, FreezeMonitor
from glai.resize import StaleOptimizerStateError
from glai_kernels import unit_mask


def _trained(r, hidden=(12, 20, 8), seed=0, steps=5):
    """A structural model after a few Adam steps (weights no longer at their initial scale), its data."""
    torch.manual_seed(seed)
    model = GLAIMLP(7, list(hidden), 3, reduction=r)
    x, y = torch.randn(96, 7), torch.randint(0, 3, (96,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, x, y


@pytest.mark.parametrize("r", [1, 2, 4])
@pytest.mark.parametrize("hidden", [(12,), (12, 20, 8)])
def test_widening_keeps_the_function_at_the_freeze(r, hidden):
    model, _, x, _ = _trained(r, hidden)
    before = model(x)
    structural = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in model.layers]
    model.freeze()
    after = model(x)
    # fp32 rounding of the split shares only: measured relative error <= 1e-6 (max |diff| / max |y|)
    assert ((after - before).abs().max() / before.abs().max()).item() < 2e-6
    torch.testing.assert_close(after, before, rtol=2e-6, atol=2e-6)
    for i, (layer, (w_s, b_s)) in enumerate(zip(model.layers, structural)):
        w_q = layer.weight.detach()
        if i < len(hidden):  # rows: unit j*r + k copies unit j's bias ...
            assert torch.equal(layer.bias.detach(), b_s.repeat_interleave(r))
        else:
            assert torch.equal(layer.bias.detach(), b_s)
        if i == 0:  # ... and, in the first layer, its incoming weights
            assert torch.equal(w_q, w_s.repeat_interleave(r, dim=0))
        else:  # columns: the r copies of input unit i share W_s[:, i] among them, positive shares summing to 1
            sums = w_q.reshape(w_q.shape[0], -1, r).sum(-1)
            rows = w_s.repeat_interleave(r, dim=0) if i < len(hidden) else w_s
            torch.testing.assert_close(sums, rows, rtol=1e-6, atol=1e-7)
            shares = w_q.reshape(w_q.shape[0], -1, r) / rows.unsqueeze(-1)
            assert (shares > 0).all()
            if r > 1:  # each receiving row draws its own split
                assert not torch.allclose(shares[0], shares[1])


@pytest.mark.parametrize(
    "make_opt", [lambda p: torch.optim.Adam(p, lr=1e-2), lambda p: torch.optim.SGD(p, lr=0.1)]
)
def test_copies_drift_apart_after_a_few_steps(make_opt):
    r = 2
    model, _, x, y = _trained(r, (12, 20))
    model.freeze()
    opt = make_opt(model.parameters())
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for layer, words in zip(model.layers[:-1], model.patterns(x)):
        rows = layer.weight.detach().reshape(-1, r, layer.in_features)
        gap = (rows[:, 0] - rows[:, 1]).norm(dim=1) / rows[:, 0].norm(dim=1)
        # Every pair of copies whose gate opens for some sample has left the other behind (they started
        # equal); the copies of a unit that never fires get no gradient at all.
        live = unit_mask(words, rows.shape[0]).any(dim=0)
        assert live.sum() >= rows.shape[0] // 2 and (gap[live] > 1e-4).all(), gap


def test_random_numbers_come_from_the_generator_only():
    model, _, x, _ = _trained(2, (12, 20))
    copies = [GLAIMLP(7, [12, 20], 3, reduction=2) for _ in range(4)]
    for c in copies:
        c.load_state_dict(model.state_dict())
    fresh, other = GLAIMLP(7, [12, 20], 3), GLAIMLP(7, [12, 20], 3, reduction=2)
    state = torch.random.get_rng_state()
    copies[0].freeze(generator=torch.Generator().manual_seed(1))
    copies[1].freeze(generator=torch.Generator().manual_seed(1))
    copies[2].freeze()  # None: seeded from the structure, the same for the same model
    copies[3].freeze()
    assert torch.equal(torch.random.get_rng_state(), state)
    w = [c.layers[1].weight for c in copies]
    assert torch.equal(w[0], w[1]) and torch.equal(w[2], w[3]) and not torch.equal(w[0], w[2])
    fresh.freeze(init="random")
    other.freeze(init="random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_random_init_restarts_the_quantitative_net():
    model, _, x, _ = _trained(2, (12, 20))
    before = model(x)
    model.freeze(init="random", generator=torch.Generator().manual_seed(0))
    assert [m.weight.shape for m in model.layers] == [(12, 7), (20, 12), (3, 20)]
    assert not torch.allclose(model(x), before, atol=1e-2)
    bound = 12**-0.5
    assert model.layers[1].weight.abs().max() <= bound and model.layers[1].bias.abs().max() <= bound
    with pytest.raises(ValueError, match=r"init must be one of \('widen', 'random'\), got 'copy'"):
        GLAIMLP(4, 8, 2).freeze(init="copy")
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        GLAIMLP(4, 8, 2).freeze(generator=0)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer or None, got list"):
        GLAIMLP(4, 8, 2).freeze(optimizer=[])


@pytest.mark.parametrize(
    "make_opt, state_name",
    [(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "momentum_buffer"), (torch.optim.Adam, "exp_avg")],
)
def test_optimizer_keeps_its_parameters_and_a_stale_state_is_refused(make_opt, state_name):
    model, _, x, y = _trained(2, (12, 20), steps=0)
    params = list(model.parameters())
    opt = make_opt(params)
    F.cross_entropy(model(x), y).backward()
    opt.step()  # a state at the structural shapes
    loss = F.cross_entropy(model(x), y)  # a graph left alive across the freeze, as a training loop leaves one
    model.freeze()
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(p.grad is None for p in params)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(
        StaleOptimizerStateError, match=rf"state '{state_name}' of shape \[6, 7\].*now \[12, 7\]"
    ):
        opt.step()
    del loss
    # freeze(optimizer=...) drops exactly that state; the same optimizer then trains the widened net.
    model, _, x, y = _trained(2, (12, 20), steps=0)
    opt = make_opt(model.parameters())
    F.cross_entropy(model(x), y).backward()
    opt.step()
    model.freeze(optimizer=opt)
    assert len(opt.state) == 0
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(start, model.parameters()))
    assert opt.state[model.layers[0].weight][state_name].shape == (12, 7)


def test_reduction_one_keeps_the_optimizer_state():
    model, opt, x, y = _trained(1, (12, 20))
    kept = {id(p): opt.state[p]["exp_avg"].clone() for p in model.parameters()}
    model.freeze(optimizer=opt)
    assert all(torch.equal(opt.state[p]["exp_avg"], kept[id(p)]) for p in model.parameters())


def test_resume_a_post_freeze_checkpoint_into_a_model_whose_optimizer_came_first():
    model, _, x, y = _trained(2, (12, 20), steps=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.freeze(optimizer=opt)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)

    fresh = GLAIMLP(7, [12, 20], 3, reduction=2)  # the exact sequence: model and optimizer first ...
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    params = list(fresh.parameters())
    fresh.load_state_dict(ckpt["model"])  # ... then the checkpoint of both
    fresh_opt.load_state_dict(ckpt["opt"])
    assert fresh.phase == "quantitative" and [id(p) for p in fresh.parameters()] == [id(p) for p in params]
    before = [p.detach().clone() for p in params]
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params))  # it trains
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)  # exactly as the run it was taken from


def test_freeze_monitor_example_works_unchanged_for_reduction_two():
    """The README's loop: one optimizer, built first; the monitor freezes the model and resets its state."""
    torch.manual_seed(0)
    x, y = torch.randn(128, 7), torch.randint(0, 3, (128,))
    model = GLAIMLP(7, [16, 16], 3, reduction=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = FreezeMonitor(model, probe=x[:32], threshold=1.0, patience=1, optimizer=optimizer)
    losses = []
    for epoch in range(4):
        for i in range(0, 128, 32):
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(F.cross_entropy(model(x), y).item())
        if model.phase == "structural":
            monitor.check()
    assert monitor.frozen_at == 2 and model.layers[0].weight.shape == (16, 7)
    assert losses[-1] < losses[1]  # the widened net keeps learning after the freeze
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer or None, got dict"):
        FreezeMonitor(model, probe=x, optimizer={})
