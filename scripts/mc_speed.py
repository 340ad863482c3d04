"""Time the built-in letter scorer against lm-evaluation-harness on the same questions.

    python scripts/mc_speed.py --model tiny --questions 200 --shots 5
    python scripts/mc_speed.py --model smollm2_135m --questions 100

Questions are the MMLU fixture's, repeated to the requested count (5-shot prompts from its dev
split). Prints wall-clock seconds per backend and whether accuracy and answers agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from unlearn.benchmarks.mmlu import load_mmlu
from unlearn.eval.choice import MCTask, evaluate_task
from unlearn.eval.lmeval import evaluate_tasks

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mmlu"


def load_model(name: str):
    if name == "tiny":
        from unlearn.models.tiny import TinyLlama

        return TinyLlama().load(torch.float32)
    from unlearn.models.smollm2 import SmolLM2

    return SmolLM2().load(torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "smollm2_135m"], default="tiny")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_mmlu(path=str(FIXTURES / "test.jsonl"), dev_path=str(FIXTURES / "dev.jsonl"))
    base = data["mmlu"]
    # distinct questions (lm-eval reuses the forward pass of identical contexts)
    rows = [
        {**base[i % len(base)], "id": f"q{i}", "question": f"{base[i % len(base)]['question']} (variant {i})"}
        for i in range(args.questions)
    ]
    task = MCTask("mmlu", rows, n_shot=args.shots, dev=data["mmlu_dev"])
    model, tok = load_model(args.model)
    model.eval()
    t = time.perf_counter()
    ours = evaluate_task(model, tok, task, args.batch_size)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = evaluate_tasks(model, tok, [task], args.batch_size)["mmlu"]
    t_theirs = time.perf_counter() - t
    same = ours["pred"] == theirs["pred"]
    gap = float(np.abs(ours["logprobs"] - theirs["logprobs"]).max())
    print(
        f"model={args.model} questions={args.questions} shots={args.shots} batch={args.batch_size} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"builtin: {t_ours:.1f}s  lm-eval: {t_theirs:.1f}s  ratio {t_theirs / t_ours:.2f}x")
    print(f"accuracy {ours['acc']:.3f} vs {theirs['acc']:.3f}; same answers: {same}; max |logprob gap| {gap:.2e}")


if __name__ == "__main__":
    main()
