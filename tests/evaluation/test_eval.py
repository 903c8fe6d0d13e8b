"""`llama-aot eval`: perplexity through a compiled package's library against transformers on the same tokens,
the windowing against the training script's own evaluation, bits per byte, and the command's bad inputs."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from cli.main import DEFAULT_MODEL, main
from evaluation.corpus import read_sources, split_files
from evaluation.documents import Document, load_documents
from evaluation.perplexity import _nll, evaluate, open_scorer

REPO = DEFAULT_MODEL.parent.parent
CHUNK = 64  # prefill chunk of the packages: a window of 256 is scored in four library calls


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    made = {}

    def get(quant: str):
        if quant not in made:
            out = root / quant
            assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", quant, "--prefill-chunk",
                         str(CHUNK), "--context-window", "512"]) == 0
            made[quant] = out
        return made[quant]

    return get


@pytest.fixture(scope="module")
def heldout():
    return load_documents("heldout")


@pytest.fixture(scope="module")
def reference():
    return open_scorer(DEFAULT_MODEL)


@pytest.mark.parametrize("context", [256, 300])  # 300: windows of 5 chunks, the last one partial
def test_q0f32_package_matches_transformers(packages, heldout, reference, context):
    ours = evaluate(open_scorer(packages("q0f32")), heldout, "heldout", context, max_tokens=3000, progress=False)
    ref = evaluate(reference, heldout, "heldout", context, max_tokens=3000, progress=False)
    assert (ours.tokens, ours.bytes, ours.documents) == (ref.tokens, ref.bytes, ref.documents) == (3000, ours.bytes, 1)
    assert ours.kind == "package" and ref.kind == "checkpoint"
    assert abs(ours.perplexity / ref.perplexity - 1) < 1e-3  # the bound: 0.1%
    assert 10 < ref.perplexity < 200  # a trained model on held-out code: far below the vocabulary's 4096


def test_windows_match_the_training_scripts_evaluation(reference):
    """The training script's model_nll (torch cross-entropy over its own windows) on the first held-out files:
    the same summed NLL over the same number of tokens."""
    spec = importlib.util.spec_from_file_location("train_tiny_model", REPO / "scripts" / "train_tiny_model.py")
    ttm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttm)
    names = split_files()[1][1:3]
    texts = read_sources(names)
    want, count, _ = ttm.model_nll(reference.model, ttm.encode_docs(reference.tokenizer, texts), seq_len=128)
    got = evaluate(reference, [Document(n, t) for n, t in zip(names, texts)], "two files", 128, progress=False)
    assert got.tokens == count and got.documents == 2
    assert got.nll_nats == pytest.approx(want, rel=1e-6)
    assert got.bytes == sum(len(t.encode()) for t in texts)


def test_nll_is_the_cross_entropy():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((37, 301)) * 8).astype(np.float32)
    targets = rng.integers(0, 301, 37).tolist()
    want = torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.tensor(targets),
                                             reduction="sum").item()
    assert _nll(logits, targets) == pytest.approx(want, rel=1e-12)


def test_bits_per_byte_count_the_text_scored(tmp_path, reference):
    text = "def café(x):\n    return '日本語' * x  # ünïcödé\n" * 40
    path = tmp_path / "text.py"
    path.write_text(text, encoding="utf-8")
    whole = evaluate(reference, load_documents(str(path)), "file", 64, progress=False)
    assert whole.bytes == len(text.encode()) and whole.documents == 1
    assert whole.bits_per_byte == pytest.approx(whole.nll_nats / math.log(2) / whole.bytes)
    ids = reference.tokenizer.encode(text, add_special_tokens=False)
    assert whole.tokens == len(ids.ids) + 1  # every token and the end of text; the leading <bos> is given
    part = evaluate(reference, load_documents(str(path)), "file", 64, max_tokens=50, progress=False)
    # 50 predicted tokens: <bos> predicts tokens 0..49, so the text through token 49's end offset
    assert part.tokens == 50 and part.bytes == len(text[: ids.offsets[49][1]].encode())


def test_quantized_packages_cost_little_perplexity(packages, heldout, reference):
    ref = evaluate(reference, heldout, "heldout", 256, max_tokens=4000, progress=False).perplexity
    q8 = evaluate(open_scorer(packages("q8f16")), heldout, "heldout", 256, max_tokens=4000, progress=False).perplexity
    q4 = evaluate(open_scorer(packages("q4f16")), heldout, "heldout", 256, max_tokens=4000, progress=False).perplexity
    assert abs(q8 / ref - 1) < 0.01  # 8-bit weights: within 1%
    assert 1.0 < q4 / ref < 1.15  # 4-bit weights (and int8 activations) lose some, not much


def test_codebook_packages_cost_little_perplexity(packages, heldout, reference, tmp_path):
    """cb8f16 / cb4f16 / cb3f16 through their libraries on held-out text (uncalibrated k-means), and a cb4f16
    package whose k-means the Fisher information of the training split weighted: recorded, and no worse."""
    def ppl(pkg):
        return evaluate(open_scorer(pkg), heldout, "heldout", 256, max_tokens=4000, progress=False).perplexity

    ref = evaluate(reference, heldout, "heldout", 256, max_tokens=4000, progress=False).perplexity
    assert abs(ppl(packages("cb8f16")) / ref - 1) < 0.01  # 256 levels per 8192 weights
    # on these 4000 tokens 4-bit codebooks may even score below the float model (83.4 vs 84.0): a band, not a sign
    assert abs(ppl(packages("cb4f16")) / ref - 1) < 0.05
    assert abs(ppl(packages("cb3f16")) / ref - 1) < 0.12
    out = tmp_path / "cb4-fisher"
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "cb4f16", "--prefill-chunk", str(CHUNK),
                 "--context-window", "512", "--calibration-data", "train", "--calibration-sequences", "16"]) == 0
    record = json.loads((out / "llama-aot.json").read_text())["quantization"]
    assert record["calibration"] == {"importance": "fisher_diagonal", "data": "train", "sequences": 16, "seq_len": 256}
    assert json.loads((packages("cb4f16") / "llama-aot.json").read_text())["quantization"]["calibration"] is None
    assert abs(ppl(out) / ref - 1) < 0.05


def test_cli_prints_one_json_line(packages, capsys):
    assert main(["eval", str(packages("q0f32")), "--max-tokens", "300", "--json", "--context", "128"]) == 0
    out = capsys.readouterr()
    line = json.loads(out.out.strip())
    assert line["tokens"] == 300 and line["context"] == 128 and line["kind"] == "package"
    assert line["perplexity"] == pytest.approx(math.exp(line["nll_nats"] / 300))
    assert "perplexity" in out.err and "bits/byte" in out.err


@pytest.mark.parametrize("setup,args,message", [
    (None, ["--data", "/nonexistent.txt"], "no such file"),
    (b"", ["--data", "{f}"], "empty"),
    (b"  \n\t", ["--data", "{f}"], "empty"),
    (b"abc\0def", ["--data", "{f}"], "binary"),
    (b"\xff\xfe bad", ["--data", "{f}"], "not UTF-8"),
    (None, ["--context", "0"], "at least 1"),
    (None, ["--context", "600"], "exceeds the package's context window of 512"),
    (None, ["--max-tokens", "0"], "at least 1"),
])
def test_bad_input_is_one_line(packages, tmp_path, capsys, setup, args, message):
    f = tmp_path / "data.txt"
    if setup is not None:
        f.write_bytes(setup)
    code = main(["eval", str(packages("q0f32")), *[a.format(f=f) for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_neither_package_nor_checkpoint(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "neither a compiled package" in capsys.readouterr().err


def test_missing_tokenizer(tmp_path, capsys):
    (tmp_path / "config.json").write_text((DEFAULT_MODEL / "config.json").read_text())
    assert main(["eval", str(tmp_path)]) == 2
    assert "has no tokenizer.json" in capsys.readouterr().err


def test_package_without_score_function(packages, monkeypatch, capsys):
    """A package compiled before `eval` existed has no score function: one line saying to recompile."""
    from runtime_stubs import engine

    load = engine.Engine.__init__

    def without_score(self, *args, **kwargs):
        load(self, *args, **kwargs)
        self._score = None

    monkeypatch.setattr(engine.Engine, "__init__", without_score)
    assert main(["eval", str(packages("q0f32")), "--max-tokens", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "has no score function" in err and len(err.splitlines()) == 1
