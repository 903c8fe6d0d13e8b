"""The input loaders against hostile files (scripts/fuzz_loaders.py, docs/reliability.md).

A short seeded fuzz per target (the full bounded run is the script itself), the harness's own checks (it must
report what it is meant to find), and one hand-written regression per finding fixed: the exact hostile input
and the one-line LlamaAotError it now gives.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from runtime_stubs.errors import LlamaAotError

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    name = "fuzz_loaders"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "fuzz_loaders.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


fz = _load_script()


def one_line_error(fn, *args) -> str:
    with pytest.raises(LlamaAotError) as ei:
        fn(*args)
    msg = str(ei.value)
    assert fz.message_problem(msg) is None, (fz.message_problem(msg), msg[:300])
    return msg


# ============================================================================ the short seeded fuzz

# (target, seed, inputs): about 30 s on a loaded 2-core machine. The tokenizer is slow (one seed is the tiny
# model's 262 KB tokenizer.json).
SHORT = [("safetensors", 101, 900), ("checkpoint_index", 202, 700), ("config", 303, 900), ("tokenizer", 404, 250),
         ("soc_toml", 505, 800), ("tuning_db", 606, 800), ("package", 707, 800)]


def test_every_target_is_in_the_short_run():
    assert sorted(t for t, _, _ in SHORT) == sorted(fz.TARGETS)


@pytest.mark.parametrize("name,seed,inputs", SHORT, ids=[t for t, _, _ in SHORT])
def test_short_seeded_fuzz(tmp_path, name, seed, inputs):
    res = fz.fuzz_target(name, fz.TARGETS[name], inputs=inputs, seconds=None, seed=seed, findings_dir=tmp_path,
                         timeout_s=5.0, progress=False)
    assert res.inputs == inputs
    first = next(iter(res.details.values()), "")
    assert not res.findings, f"{len(res.findings)} finding(s): {list(res.findings)}\n{first[-3000:]}"


def test_inputs_are_deterministic():
    t = fz.TARGETS["config"]
    corpus = t.seeds()
    a = [fz.make_input(t, corpus, ["x"], [], 7, "config", i) for i in range(len(corpus), len(corpus) + 30)]
    b = [fz.make_input(t, corpus, ["x"], [], 7, "config", i) for i in range(len(corpus), len(corpus) + 30)]
    assert a == b and a != [fz.make_input(t, corpus, ["x"], [], 8, "config", i) for i in range(len(corpus), len(corpus) + 30)]
    assert fz.make_input(t, corpus, [], [], 7, "config", 0) == corpus[0]  # the seeds come first, unmutated


# ============================================================================ the harness finds what it should


def _planted(run):
    return fz.Target(seeds=lambda: [{"f.json": b'{"a": 1}'}], run=run)


@pytest.mark.parametrize("run,expect", [
    (lambda d: {}["missing"], "KeyError at"),
    (lambda d: (_ for _ in ()).throw(LlamaAotError("two\nlines")), "multi-line message"),
    (lambda d: (_ for _ in ()).throw(LlamaAotError("x" * 5000)), "longer than"),
    (lambda d: (_ for _ in ()).throw(LlamaAotError("bad \ud800")), "lone surrogates"),
    (lambda d: fz.ok(lambda: (_ for _ in ()).throw(LlamaAotError(""))), "empty message"),
    (lambda d: time.sleep(5), "timeout in"),
])
def test_harness_reports_planted_bugs(tmp_path, run, expect):
    res = fz.fuzz_target("planted", _planted(run), inputs=3, seconds=None, seed=0, findings_dir=tmp_path,
                         timeout_s=0.3, progress=False)
    assert len(res.findings) == 1 and res.failing_inputs == 3
    (sig,) = res.findings
    assert expect in sig
    saved = list((tmp_path / "planted").glob("*/input-0/f.json"))
    assert saved and (saved[0].parent.parent / "finding.txt").read_text().startswith(sig)


def test_harness_accepts_proper_errors(tmp_path):
    def run(d):
        raise LlamaAotError(f"{d}/f.json is bad; fix it")

    res = fz.fuzz_target("fine", _planted(run), inputs=20, seconds=None, seed=0, progress=False)
    assert res.inputs == 20 and not res.findings


# ============================================================================ regressions: safetensors

from compiler.frontend import Checkpoint, load_spec  # noqa: E402
from compiler.frontend.checkpoint import read_safetensors_header  # noqa: E402


def st_bytes(header, body: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8", "surrogatepass")
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + body


def header_error(tmp_path, data: bytes) -> str:
    f = tmp_path / "model.safetensors"
    f.write_bytes(data)
    return one_line_error(read_safetensors_header, f)


def ck_dir(tmp_path, **files) -> Path:
    """A checkpoint folder: the fuzzer's tiny config plus ``files`` (name -> bytes)."""
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(fz.TINY_CONFIG))
    for name, data in files.items():
        (d / name.replace("__", ".")).write_bytes(data)
    return d


def checkpoint_error(d: Path) -> str:
    def load():
        with Checkpoint(d) as ck:
            ck.validate(load_spec(d))
            for n in ck.names():
                ck.read(n)

    return one_line_error(load)


F32 = lambda shape, b, e: {"dtype": "F32", "shape": shape, "data_offsets": [b, e]}  # noqa: E731


def test_header_nested_too_deeply(tmp_path):  # was RecursionError
    assert "nested too deeply" in header_error(tmp_path, st_bytes(b"[" * 100_000))


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**64], [2**63, 2]])
def test_shape_product_past_int64(tmp_path, shape):
    """[2**32, 2**32] wrapped to 0 in int64 (accepted, then read() failed with ValueError in reshape); [2**64]
    raised OverflowError in np.prod. Now: Python ints, and the size check names both sides."""
    msg = header_error(tmp_path, st_bytes({"w": F32(shape, 0, 0)}))
    assert "needs" in msg and "bytes but data_offsets span 0" in msg


@pytest.mark.parametrize("shape", [[0, 2**70], [0, 2**40, 2**40]])
def test_zero_size_shape_with_huge_dims(tmp_path, shape):
    """Found by the full run: an empty tensor whose other dims numpy cannot represent passed the header check
    and read() raised ValueError ("Maximum allowed dimension exceeded") in reshape."""
    assert "is too large for any tensor" in header_error(tmp_path, st_bytes({"w": F32(shape, 0, 0)}))


def test_zero_size_tensor_reads(tmp_path):
    d = ck_dir(tmp_path, model__safetensors=st_bytes({"w": F32([0, 3], 0, 0), "v": F32([1], 0, 4)}, b"\0" * 4))
    with Checkpoint(d) as ck:
        assert ck.read("w").shape == (0, 3) and ck.read("v").shape == (1,)


def test_long_entry_is_cut_in_the_message(tmp_path):  # was a 30 KB message
    msg = header_error(tmp_path, st_bytes({"w": {"dtype": "F32", "shape": [1] * 10_000, "data_offsets": [0, -4]}}))
    assert "bad header entry for tensor 'w'" in msg and "..." in msg


def test_duplicated_tensor_name(tmp_path):  # was silently keeping the last one
    raw = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    assert "has the key 'w' twice" in header_error(tmp_path, st_bytes(raw, b"\0" * 8))


def test_overlapping_tensors(tmp_path):  # was accepted: two tensors read the same bytes
    msg = header_error(tmp_path, st_bytes({"a": F32([2], 0, 8), "b": F32([2], 4, 12)}, b"\0" * 12))
    assert "tensors 'a' (bytes" in msg and "'b'" in msg and "overlap" in msg


def test_shared_zero_size_offsets_are_not_overlap(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(st_bytes({"a": F32([0], 0, 0), "b": F32([0], 0, 0), "c": F32([1], 0, 4)}, b"\0" * 4))
    assert sorted(read_safetensors_header(f)[0]) == ["a", "b", "c"]


@pytest.mark.parametrize("length,words", [(2**63, "header length 9223372036854775808"), (2**64 - 1, "does not fit"),
                                          (10_000, "does not fit")])
def test_header_length_past_the_file(tmp_path, length, words):
    assert words in header_error(tmp_path, st_bytes({"w": F32([1], 0, 4)}, b"\0" * 4, length=length))


@pytest.mark.parametrize("offsets", [[0, 400], [8, 4], [-4, 4], [0.0, 4.0], [0, 2**64], [0], "0-4"])
def test_bad_data_offsets(tmp_path, offsets):
    msg = header_error(tmp_path, st_bytes({"w": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}, b"\0" * 4))
    assert ("runs past" in msg or "ends at byte" in msg) if offsets in ([0, 400], [0, 2**64]) else "bad header entry" in msg


def test_non_utf8_header(tmp_path):
    assert "not valid JSON" in header_error(tmp_path, st_bytes(b'{"\xff": 1}'))


@pytest.mark.parametrize("meta", [[], 5, "x", None, {"format": ["pt"]}])
def test_metadata_of_any_type_is_ignored(tmp_path, meta):
    f = tmp_path / "model.safetensors"
    f.write_bytes(st_bytes({"__metadata__": meta, "w": F32([1], 0, 4)}, b"\0" * 4))
    tensors, got = read_safetensors_header(f)
    assert list(tensors) == ["w"] and isinstance(got, dict)


def _tiny_checkpoint(tmp_path) -> Path:
    files = fz._checkpoint_files(fz.TINY_CONFIG, "float32")
    d = ck_dir(tmp_path)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def _add_tensor(d: Path, name: str, dtype: str = "F32") -> None:
    """Append one 4-byte tensor called ``name`` to the checkpoint's model.safetensors."""
    f = d / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    header[name] = {"dtype": dtype, "shape": [1], "data_offsets": [len(body), len(body) + 4]}
    f.write_bytes(st_bytes(header, body + b"\0" * 4))


@pytest.mark.parametrize("name,shown", [("a\nb", "'a\\nb'"), ("\ud800", "'\\ud800'"), ("x" * 5000, "'xxx")])
def test_extra_tensor_with_hostile_name(tmp_path, name, shown):
    """validate() listed file-given names raw: a newline split the message, a lone surrogate made it
    unprintable, a 5000-character name made it 5 KB long."""
    d = _tiny_checkpoint(tmp_path)
    _add_tensor(d, name)
    msg = checkpoint_error(d)
    assert "config.json does not describe" in msg and shown in msg


def test_dtype_with_newline(tmp_path):  # validate() printed the dtype code raw: a two-line message
    d = _tiny_checkpoint(tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["model.norm.weight"]["dtype"] = "F32\n"
    f.write_bytes(st_bytes(header, data[8 + n:]))
    assert "has dtype 'f32\\n'" in checkpoint_error(d)


# ============================================================================ regressions: sharded index


def _sharded(tmp_path) -> Path:
    d = ck_dir(tmp_path)
    for name, data in fz._checkpoint_files(fz.TINY_CONFIG, "float32", shards=2).items():
        (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("shard", ["model-00001-of-00002.safetensors\x00", "x" * 300, "../model.safetensors",
                                   "/etc/passwd", "sub/a.safetensors", "..", "", "\ud800.safetensors"])
def test_index_names_a_path_not_a_shard(tmp_path, shard):
    """A NUL or a 300-character name raised ValueError/OSError from Path.is_file; '/etc/passwd' or '../x' read
    a file outside the checkpoint folder; a lone surrogate made the 'missing shard' message unprintable."""
    d = _sharded(tmp_path)
    idx = d / "model.safetensors.index.json"
    index = json.loads(idx.read_text())
    index["weight_map"]["model.norm.weight"] = shard
    idx.write_bytes(json.dumps(index).encode())
    assert "which is not a file name in the checkpoint folder" in checkpoint_error(d)


def test_index_nested_too_deeply(tmp_path):  # was RecursionError
    d = _sharded(tmp_path)
    (d / "model.safetensors.index.json").write_text("[" * 100_000)
    assert "needs a JSON object with a 'weight_map'" in checkpoint_error(d)


# ============================================================================ regressions: config.json


def config_error(tmp_path, cfg) -> str:
    d = tmp_path / "c"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_bytes(cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode("utf-8", "surrogatepass"))
    return one_line_error(load_spec, d)


def test_config_nested_too_deeply(tmp_path):  # was RecursionError
    assert "nested too deeply" in config_error(tmp_path, b'{"a": ' + b"[" * 100_000)


@pytest.mark.parametrize("layers", [10**9, 2**70, 1e300])
def test_config_huge_layer_count(tmp_path, layers):  # was MemoryError / OverflowError building the layer tuple
    msg = config_error(tmp_path, dict(fz.TINY_CONFIG, num_hidden_layers=layers))
    assert "num_hidden_layers is" in msg and "more than 4096" in msg


@pytest.mark.parametrize("key", ["hidden_size", "vocab_size", "intermediate_size", "max_position_embeddings"])
def test_config_huge_sizes(tmp_path, key):
    assert f"{key} is" in config_error(tmp_path, dict(fz.TINY_CONFIG, **{key: 2**40}))


@pytest.mark.parametrize("text,key", [
    (b'"rms_norm_eps": NaN', "rms_norm_eps"), (b'"rms_norm_eps": Infinity', "rms_norm_eps"),
    (b'"rope_theta": 1e400', "rope_theta"), (b'"rope_theta": ' + b"9" * 400, "rope_theta"),
])
def test_config_non_finite_numbers(tmp_path, text, key):
    """NaN/Infinity were accepted (and made llama-aot.json invalid strict JSON); a 400-digit int raised
    OverflowError in float()."""
    raw = json.dumps({k: v for k, v in fz.TINY_CONFIG.items() if k != key}).encode()
    assert f"{key} must be a positive number" in config_error(tmp_path, raw[:-1] + b", " + text + b"}")


def test_config_rope_factor_nan(tmp_path):
    raw = json.dumps(fz.TINY_CONFIG).replace('"factor": 8.0', '"factor": NaN').encode()
    assert "rope_scaling.factor must be a positive number, got nan" in config_error(tmp_path, raw)


def test_config_architectures_with_newline(tmp_path):  # was a two-line message
    assert "architectures='a\\nb'" in config_error(tmp_path, dict(fz.TINY_CONFIG, architectures="a\nb"))


def test_config_long_unknown_key(tmp_path):  # was a message as long as the key
    cfg = dict(fz.TINY_CONFIG, layer_shapes=[{"k" * 5000: 1}])
    msg = config_error(tmp_path, cfg)
    assert "layer_shapes[0] has unknown key(s) ['kkk" in msg and len(msg) < 400


@pytest.mark.parametrize("key,value", [("bos_token_id", 2**63), ("eos_token_id", [1, 2**64])])
def test_config_token_ids_past_int32(tmp_path, key, value):
    assert key in config_error(tmp_path, dict(fz.TINY_CONFIG, **{key: value}))


# ============================================================================ regressions: tokenizer.json

from runtime_stubs.tokenizer import load_tokenizer  # noqa: E402


def tok_error(tmp_path, data: bytes) -> str:
    p = tmp_path / "tokenizer.json"
    p.write_bytes(data)
    return one_line_error(load_tokenizer, p)


def test_tokenizer_library_panic(tmp_path):
    """A BPE continuing_subword_prefix longer than the tokens made the library panic (pyo3 PanicException,
    a BaseException) in Tokenizer.from_str."""
    tj = json.loads(fz._seeds_tokenizer()[0]["tokenizer.json"])
    tj["model"]["continuing_subword_prefix"] = "File"
    assert "the tokenizers library failed" in tok_error(tmp_path, json.dumps(tj).encode())


def test_tokenizer_loads_but_cannot_encode(tmp_path):
    tj = json.loads(fz._seeds_tokenizer()[1]["tokenizer.json"])  # WordLevel
    tj["model"]["unk_token"] = "<not-in-vocab>"
    assert "cannot tokenize text" in tok_error(tmp_path, json.dumps(tj).encode())


@pytest.mark.parametrize("data,words", [(b"\xff\xfe{}", "not UTF-8"), (b"{}", "not a valid tokenizer file"),
                                        (b"[" * 100_000, "not a valid tokenizer file")],
                         ids=["not-utf8", "empty-object", "deep-nesting"])
def test_tokenizer_bad_files(tmp_path, data, words):
    assert words in tok_error(tmp_path, data)


def test_tokenizer_missing(tmp_path):
    assert "is missing" in one_line_error(load_tokenizer, tmp_path / "tokenizer.json")


def test_tokenizer_real_file_loads():
    tok = load_tokenizer(ROOT / "models" / "tiny-llama3" / "tokenizer.json")
    assert tok.decode(tok.encode("hello world").ids).strip() == "hello world"


# ============================================================================ regressions: SoC .toml

from targets.registry import load_soc  # noqa: E402

GOOD_SOC = ROOT / "targets" / "socs" / "snapdragon-8-gen-3.toml"


def soc_error(tmp_path, text: bytes | str) -> str:
    p = tmp_path / "snapdragon-8-gen-3.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return one_line_error(load_soc, p)


def test_soc_not_utf8(tmp_path):  # was UnicodeDecodeError from tomllib.load
    assert "not UTF-8 text (byte 0)" in soc_error(tmp_path, b"\xff" + GOOD_SOC.read_bytes())


def test_soc_nested_too_deeply(tmp_path):  # was RecursionError
    assert "nested too deeply" in soc_error(tmp_path, "x = " + "[" * 100_000)


@pytest.mark.parametrize("old,new,words", [
    ("max_ghz = 3.30", "max_ghz = inf", "implausibly large"),
    ('usable_app_memory_gb = { value = 4.5', 'usable_app_memory_gb = { value = 1e300', "implausibly large"),
    ('ram_gb = { value = 12', 'ram_gb = { value = 1e300', "implausibly large"),
    ("count = 1,", "count = 100000000000000000000000000000,", "implausibly large"),
    ('"+neon"', '"+neon\\n"', "bad LLVM feature '+neon\\n'"),
    ('[cache]', '[cache]\n"a\\nb" = 1', "unknown key 'a\\nb'"),
    ('os = "android"', 'os = "x\\n' + "y" * 3000 + '"', "unknown os 'x\\ny"),
    ('name = "snapdragon-8-gen-3"', 'name = "' + "x" * 5000 + '"', "[name] is 'xxx"),
])
def test_soc_hostile_values(tmp_path, old, new, words):
    """inf / 1e300 GB passed the schema and raised OverflowError in usable_memory_bytes; a key or value with a
    newline split the message; a 3000-character value made it 3 KB long; '+neon\\n' passed the ``$`` regex."""
    text = GOOD_SOC.read_text()
    assert old in text
    assert words in soc_error(tmp_path, text.replace(old, new, 1))


# ============================================================================ regressions: tuning database

from schedules.tuning.database import TuningDB, read_file  # noqa: E402


def _db(tmp_path, change=None, header_change=None) -> Path:
    seed = json.loads(fz._seeds_tuning_db()[0][f"{fz.DB_SOC}.json"])
    if change:
        change(seed["records"][0])
    if header_change:
        header_change(seed["header"])
    p = tmp_path / f"{fz.DB_SOC}.json"
    p.write_text(json.dumps(seed))
    return p


def test_db_nested_too_deeply(tmp_path):  # was RecursionError
    p = tmp_path / f"{fz.DB_SOC}.json"
    p.write_text("[" * 100_000)
    assert "corrupted (nested too deeply)" in one_line_error(read_file, p)


@pytest.mark.parametrize("field,value,words", [
    ("key", {"a": 1}, "is not a kernel key"),  # was TypeError: unhashable type
    ("trials", [8], "trials [8] is not a count"),  # was TypeError in done()
    ("tuned_us", "fast", "tuned_us 'fast' is not a time"),  # was ValueError in merge_records
    ("tuned_us", float("nan"), "is not a time"),
    ("history", [[{}, "slow", 1.0]], "history entry"),  # was TypeError in the cost-model report
    ("history", [5], "history entry"),
    ("history", [[]], "history entry"),  # was IndexError in merge_records
    ("predicted", "yes", "predicted 'yes'"),
])
def test_db_bad_record_fields(tmp_path, field, value, words):
    p = _db(tmp_path, lambda r: r.update({field: value}))
    msg = one_line_error(read_file, p)
    assert "corrupted (record 0:" in msg and words in msg


@pytest.mark.parametrize("where", ["label", "knobs", "header"])
def test_db_nested_record(tmp_path, where):
    """Found by the full run: a record value nested 500 deep parsed, then merge_records' deepcopy raised
    RecursionError."""
    deep = {}
    for _ in range(500):
        deep = {"a": deep} if where == "knobs" else [deep]
    if where == "header":
        p = _db(tmp_path, header_change=lambda h: h.update(extra=deep))
    else:
        p = _db(tmp_path, lambda r: r.update({where: {"x": deep} if where == "knobs" else deep}))
    assert "corrupted (nested too deeply)" in one_line_error(read_file, p)


@pytest.mark.parametrize("value", ["llama3", {}, None, 1.5])
def test_db_bad_format_version(tmp_path, value):  # was ValueError/TypeError from int()
    _db(tmp_path, header_change=lambda h: h.update(format_version=value))
    msg = one_line_error(TuningDB.open, tmp_path, fz.DB_SOC, fz.DB_FACTS)
    assert "is not a llama-aot tuning database" in msg


@pytest.mark.parametrize("facts", [[1, 2], 5, "x"])
def test_db_facts_not_an_object(tmp_path, facts):  # was TypeError/AttributeError listing the changed facts
    _db(tmp_path, header_change=lambda h: h.update(facts=facts, facts_fingerprint="0" * 16))
    assert "other CPU facts" in one_line_error(TuningDB.open, tmp_path, fz.DB_SOC, fz.DB_FACTS)
