"""Bad input: one-line error naming the problem, non-zero exit, no output directory left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli.main import main
from compiler.frontend.synthetic import write_random_checkpoint
from model_configs import BASE


def _corrupt_header(d):
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json at!"
    f.write_bytes(bytes(data))


def _edit_config(**changes):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(changes)
        (d / "config.json").write_text(json.dumps(cfg))

    return edit


def _swap_tensor(name, new_shape=None, drop=False, extra=None):
    def edit(d):
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(d / "model.safetensors"))
        if drop:
            del tensors[name]
        elif new_shape:
            tensors[name] = tensors[name].reshape(-1)[: int(__import__("numpy").prod(new_shape))].reshape(new_shape)
        if extra:
            tensors[extra] = tensors[name][:1].copy()
        save_file(tensors, str(d / "model.safetensors"))

    return edit


CASES = {
    "non_llama": (_edit_config(architectures=["MistralForCausalLM"], model_type="mistral"), [], "Llama"),
    "missing_tensor": (_swap_tensor("model.layers.1.mlp.up_proj.weight", drop=True), [], "model.layers.1.mlp.up_proj.weight"),
    "extra_tensor": (_swap_tensor("model.norm.weight", extra="model.layers.9.bogus.weight"), [], "model.layers.9.bogus.weight"),
    "shape_mismatch": (_swap_tensor("model.layers.0.self_attn.o_proj.weight", new_shape=(64, 128)), [], "o_proj"),
    "corrupt_header": (_corrupt_header, [], "corrupt"),
    "unknown_quant": (None, ["--quant", "q3f7"], "q3f7"),
    "unknown_target": (None, ["--target", "toaster-9000"], "toaster-9000"),
    "unsupported_dtype": (_edit_config(torch_dtype="int8"), [], "int8"),
    "unknown_vulkan_profile": (None, ["--target", "vulkan", "--vulkan-profile", "no-such-gpu"], "nvidia-hopper"),
    "vulkan_profile_without_vulkan": (None, ["--vulkan-profile", "nvidia-hopper"], "--target vulkan"),
    "vulkan_profile_not_vulkan": (None, ["--target", "vulkan", "--vulkan-profile", "{profile_dir}/cuda.json"], "kind"),
    "max_memory_too_low": (None, ["--max-memory", "1M"], "needs about"),
    "max_memory_unreadable": (None, ["--max-memory", "lots"], "size like 6G"),
    "codebook_on_gpu": (None, ["--quant", "cb4f16", "--target", "vulkan"], "no vulkan kernels"),
    "calibration_without_codebook": (None, ["--calibration-data", "train"], "does not use it"),
    "calibration_empty": (None, ["--quant", "cb4f16", "--calibration-data", "{profile_dir}/empty.txt"], "empty.txt"),
    "calibration_binary": (None, ["--quant", "cb4f16", "--calibration-data", "{profile_dir}/blob.bin"], "blob.bin"),
    "calibration_missing": (None, ["--quant", "cb3f16", "--calibration-data", "{profile_dir}/nope.txt"], "nope.txt"),
    "calibration_without_tokenizer": (None, ["--quant", "cb4f16", "--calibration-data", "train"], "no tokenizer.json"),
    "mixed_without_calibration": (None, ["--quant", "mixed"], "--calibration-data"),
    "bits_without_mixed": (None, ["--bits-per-weight", "4"], "--quant mixed"),
    "sensitivity_without_mixed": (None, ["--sensitivity", "loss"], "--quant mixed"),
    "mixed_codebook_on_gpu": (None, ["--quant", "mixed", "--target", "vulkan"], "--mixed-schemes q8f16,q4f16"),
    "sparsity_out_of_range": (None, ["--activation-sparsity", "1.5", "--calibration-data", "train"], "strictly between 0 and 1"),
    "sparsity_without_calibration": (None, ["--activation-sparsity", "0.4"], "--calibration-data"),
    "sparsity_other_quant": (None, ["--activation-sparsity", "0.4", "--quant", "q8f16", "--calibration-data", "train"],
                             "needs --quant q4f16"),
    "sparsity_on_gpu": (None, ["--activation-sparsity", "0.4", "--target", "vulkan", "--calibration-data", "train"],
                        "CPU kernels only"),
    "calibration_sequences": (None, ["--quant", "cb4f16", "--calibration-data", "train", "--calibration-sequences", "0"],
                              "must be positive"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint(case, tmp_path, capsys):
    edit, extra_args, expected = CASES[case]
    src = write_random_checkpoint(tmp_path / "ckpt", dict(BASE, tie_word_embeddings=True), seed=1)
    if edit:
        edit(src)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "cuda.json").write_text('{"kind": "cuda", "arch": "sm_90"}')
    (tmp_path / "profiles" / "empty.txt").write_text("")
    (tmp_path / "profiles" / "blob.bin").write_bytes(bytes(range(256)) * 4)
    extra_args = [a.replace("{profile_dir}", str(tmp_path / "profiles")) for a in extra_args]
    out = tmp_path / "out"
    code = main(["compile", str(src), "-o", str(out), *extra_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err and err[-1].startswith("error: ") and expected in err[-1], err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "profiles"], "temporary output left behind"


def test_missing_directory_via_console_script(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "compile", str(tmp_path / "nope"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]
    assert not out.exists()


def test_existing_non_package_directory_is_never_replaced(tmp_path, capsys):
    src = write_random_checkpoint(tmp_path / "ckpt", dict(BASE, tie_word_embeddings=True), seed=1)
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert main(["compile", str(src), "-o", str(out)]) == 2
    assert "is not a llama-aot package" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "home"]


def test_failed_compile_keeps_previous_output(tmp_path, capsys):
    """A failing recompile must not destroy or half-overwrite an existing OUT."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker").write_text("old")
    code = main(["compile", str(tmp_path / "missing"), "-o", str(out)])
    assert code != 0 and (out / "marker").read_text() == "old"


def test_run_errors(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nothing"), "--prompt-ids", "1,2"]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_codebook_without_lut_kernel_warns(tmp_path, caplog):
    """A codebook scheme that gets no LUT kernel here (cb3f16 has none yet) compiles, and says it will be slow."""
    src = write_random_checkpoint(tmp_path / "ckpt", dict(BASE, tie_word_embeddings=True), seed=1)
    with caplog.at_level("WARNING", logger="compiler.compile"):
        assert main(["compile", str(src), "-o", str(tmp_path / "out"), "--quant", "cb3f16"]) == 0
    assert any("cb3f16 has no LUT kernel" in r.getMessage() for r in caplog.records)
