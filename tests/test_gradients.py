"""The gradient plumbing, with hand-made gradients: per-task buffers, accumulation, writing .grad."""

from __future__ import annotations

import pytest
import torch

from unlearn.training.gradients import GradientEMA, TaskGradients


def _params():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([[3.0]]))
    return [a, b]


def test_tasks_are_kept_apart_and_accumulated_with_their_scale():
    a, b = _params()
    g = TaskGradients([a, b], ["a", "b"])
    g.accumulate("forget", (a * torch.tensor([1.0, 1.0])).sum() + 0 * b.sum(), scale=0.5)
    g.accumulate("retain", (b * 2).sum(), scale=0.5)
    g.accumulate("forget", (a * torch.tensor([3.0, 5.0])).sum(), scale=0.5)
    torch.testing.assert_close(g.get("forget")[0], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(g.get("forget")[1], torch.tensor([[0.0]]))  # unused → zeros
    torch.testing.assert_close(g.get("retain")[0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(g.get("retain")[1], torch.tensor([[1.0]]))
    assert a.grad is None and b.grad is None, "per-task gradients must not leak into .grad"


def test_a_loss_that_touches_no_parameter_gives_zeros():
    a, b = _params()
    g = TaskGradients([a, b], ["a", "b"])
    g.accumulate("retain", torch.tensor(3.0))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in g.get("retain"))


def test_write_sets_grad_and_reset_clears_buffers():
    a, b = _params()
    g = TaskGradients([a, b], ["a", "b"])
    g.accumulate("forget", a.sum() + b.sum())
    g.write([torch.tensor([7.0, 8.0]), torch.tensor([[9.0]])])
    torch.testing.assert_close(a.grad, torch.tensor([7.0, 8.0]))
    torch.testing.assert_close(b.grad, torch.tensor([[9.0]]))
    g.reset()
    assert g.get("forget") is None


def test_all_reduce_is_a_noop_in_one_process():
    a, b = _params()
    g = TaskGradients([a, b], ["a", "b"])
    g.accumulate("forget", 2 * a.sum())
    g.all_reduce()
    torch.testing.assert_close(g.get("forget")[0], torch.tensor([2.0, 2.0]))


def test_ema_of_gradients():
    ema = GradientEMA(0.5)
    first = ema.update([torch.tensor([2.0])])
    torch.testing.assert_close(first[0], torch.tensor([2.0]))
    second = ema.update([torch.tensor([4.0])])
    torch.testing.assert_close(second[0], torch.tensor([3.0]))
    with pytest.raises(ValueError, match=r"train\.retain_ema must be a decay in \[0, 1\)"):
        GradientEMA(1.0)
