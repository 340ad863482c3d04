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


def test_backward_hands_each_gradient_to_the_sink_and_leaves_no_hook():
    a, b = _params()
    g = TaskGradients([a, b], ["a", "b"])
    got = {}
    g.backward((a * torch.tensor([3.0, 4.0])).sum(), lambda i, t: got.__setitem__(i, t))
    torch.testing.assert_close(got[0], torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(got[1], torch.tensor([[0.0]]))  # not reached: zeros
    assert a.grad is None and b.grad is None
    (a.sum() + b.sum()).backward()  # outside: plain autograd, no hook takes the gradient
    torch.testing.assert_close(a.grad, torch.tensor([1.0, 1.0]))
    with pytest.raises(RuntimeError, match=r"a\.grad must be empty"):
        g.backward(a.sum(), lambda i, t: None)


def test_tensorwise_update_writes_grad_and_frees_the_retain_buffer():
    from unlearn.combiners import PCGrad, gradient_diagnostics
    from unlearn.training.gradients import TensorwiseUpdate

    a, b = _params()
    g = TaskGradients([a, b], ["a", "b"])
    g.accumulate("retain", (a * torch.tensor([1.0, 0.0])).sum() + (b * 1.0).sum())
    g_r = [t.clone() for t in g.get("retain")]
    c = PCGrad(gamma=2.0)
    update = TensorwiseUpdate(g, c.start(g.names, 2))
    g.backward((a * torch.tensor([-1.0, 2.0])).sum() + (b * 3.0).sum(), update, once=True)
    expected = c.combine(g_r, [torch.tensor([-1.0, 2.0]), torch.tensor([[3.0]])])
    torch.testing.assert_close(a.grad, expected.update[0])  # t0 conflicts: f̃ = (0, 2), update (1, 4)
    torch.testing.assert_close(a.grad, torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(b.grad, expected.update[1])
    assert g.get("retain") == [None, None], "each retain tensor is freed once its update is written"
    stats = update.stats()
    diag = gradient_diagnostics(g_r, [torch.tensor([-1.0, 2.0]), torch.tensor([[3.0]])], expected.update)
    for k, v in {**expected.stats, **diag}.items():
        torch.testing.assert_close(stats[k], v, msg=k)


def test_drain_frees_each_tensor_after_the_sink():
    a, b = _params()
    g = TaskGradients([a, b], ["a", "b"])
    g.accumulate("forget", a.sum() + b.sum())
    seen = []
    g.drain("forget", lambda i, t: seen.append((i, g.get("forget")[i] is None, float(t.sum()))))
    assert seen == [(0, True, 2.0), (1, True, 1.0)] and g.get("forget") == [None, None]
