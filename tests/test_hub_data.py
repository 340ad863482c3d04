"""The shared data loader: local files, schema checks, and a fast, clear offline failure."""

from __future__ import annotations

import json
import time

import pytest

from unlearn.benchmarks.hub import DataUnavailable, load_rows


def test_local_jsonl_is_read_and_checked(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(3)))
    assert len(load_rows("tofu forget", None, path=str(p), required=["question", "answer"])) == 3


def test_missing_field_names_dataset_and_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataUnavailable, match=r"tofu forget: .* no field 'answer'"):
        load_rows("tofu forget", None, path=str(p), required=["question", "answer"])


def test_missing_local_file_names_the_key(tmp_path):
    with pytest.raises(DataUnavailable, match="benchmark.data.forget_path="):
        load_rows("wmdp bio forget", None, path=str(tmp_path / "nope.jsonl"), path_key="benchmark.data.forget_path")


def test_offline_hub_fails_fast_and_says_how_to_give_a_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(DataUnavailable, match=r"cannot load locuslab/TOFU .*local copy with benchmark.data.path="):
        load_rows("tofu", "locuslab/TOFU", config="forget01", split="train", path_key="benchmark.data.path")
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("bad", [42, ["Paris"], None])
def test_a_text_field_that_is_not_a_string_names_the_row_when_the_data_loads(tmp_path, bad):
    """A number, list or null among the answers stopped the run with a TypeError at encoding, after
    the target and oracle had been fine-tuned."""
    p = tmp_path / "d.jsonl"
    rows = [{"question": "q0", "answer": "a0"}, {"question": "q1", "answer": "a1"}, {"question": "q2", "answer": bad}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataUnavailable, match=r"tofu: .*d\.jsonl row 2 field 'answer' is \w+ .*row 0's is a string"):
        load_rows("tofu", None, path=str(p), required=["question", "answer"])


def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"question": "q0", "answer": "a0"}\n{"question": "q\xff", "answer": "a1"}\n')
    with pytest.raises(DataUnavailable, match=r"d\.jsonl:2: not UTF-8 text \(byte 0xff at offset 50\)"):
        load_rows("tofu", None, path=str(p), required=["question", "answer"])
