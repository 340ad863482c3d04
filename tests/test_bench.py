"""The performance benchmark (``python -m unlearn.perf.combiners``) measures what it says: its
flattening baseline computes the same update and diagnostics as the real combiners (so the
foreach-vs-flatten comparison is like for like), its memory meter sees allocations, and the
command runs end to end."""

from __future__ import annotations

import pytest
import torch

from unlearn.combiners import SAGO, PCGrad, Sum, gradient_diagnostics
from unlearn.perf.combiners import main
from unlearn.perf.flatten import FLAT, flat_diagnostics
from unlearn.perf.memory import PeakMemory

SHAPES = [(7, 5), (5,), (3, 4, 2), (11,)]


def _grads(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES], [torch.randn(s, generator=g) for s in SHAPES]


@pytest.mark.parametrize(
    "name, combiner",
    [
        ("sum", Sum(alpha=0.7, gamma=1.3)),
        ("pcgrad", PCGrad(alpha=0.7, gamma=1.3)),
        ("sago", SAGO(alpha=0.7, gamma=1.3)),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_flatten_baseline_computes_what_the_combiners_compute(name, combiner, seed):
    g_r, g_f = _grads(seed)
    ours = combiner(g_r, g_f)
    flat = FLAT[name](g_r, g_f, combiner.alpha, combiner.gamma)
    for a, b in zip(ours, flat, strict=True):
        torch.testing.assert_close(b, a)
    d_ours, d_flat = gradient_diagnostics(g_r, g_f, ours), flat_diagnostics(g_r, g_f, ours)
    for k in d_flat:
        torch.testing.assert_close(d_flat[k], d_ours[k], msg=k)


def test_peak_memory_sees_a_temporary_on_cpu():
    n = 1 << 20  # 4 MiB of fp32
    with PeakMemory("cpu") as mem:
        x = torch.ones(n)
        y = x * 2  # both alive: 8 MiB
        del x, y
    assert 8 * 2**20 <= mem.peak < 9 * 2**20


@pytest.mark.slow
def test_benchmark_command_prints_both_tables(capsys):
    main(["--models", "tiny", "--combiners", "sago", "--shapes", "1x16", "--warmup", "0", "--repeats", "1"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model | params |"))
    assert "peak − plain (grad buffers)" in header and "× plain" in header
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| tiny |")]
    assert [r[4].strip() for r in rows[:2]] == ["plain", "sago"], (
        out
    )  # plain (always measured, the baseline), then sago
    assert rows[0][6].strip() == "1.000" and rows[0][8].strip() == "+0.00"
    assert float(rows[1][8]) <= 0.2, out  # sago streams: about one tensor over plain, not a buffer
    assert len(rows) == 4 and rows[2][2].strip() == "sago"  # the combine table
    tensors, buckets, ddp, per_tensor = (int(c.split()[0]) for c in rows[3][2:6])  # the collectives table
    assert ddp == 2 * buckets + 1 < per_tensor == 2 * tensors + 1, out


def test_benchmark_shapes_must_be_batch_by_seq(capsys):
    with pytest.raises(SystemExit):
        main(["--shapes", "8by128"])
    assert "a shape is BATCHxSEQ" in capsys.readouterr().err
