"""The on-device runtime (runtime_stubs/native): built from the wheel's sources for x86_64 and
aarch64, run on packages that `llama-aot compile` wrote from one pruned random checkpoint (two KV
caches of different head counts), compared with TVM's Python runtime on the host package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from native_helpers import (MAX_TOKENS, rerecord, NATIVE, PROMPT, REPO, check, link_system_lib_driver, need, run_driver,
                            system_lib_view)  # fmt: skip
from runtime_stubs import native_build


def package_config(package: Path) -> dict:
    return json.loads((package / "llama-aot.json").read_text())


# ---------------------------------------------------------------------------------------------
# x86_64
# ---------------------------------------------------------------------------------------------


def test_x86_runtime_builds_from_wheel_sources(native_x86):
    b = native_x86
    for p in (b.static_lib, b.shared_lib, b.run, b.run_shared):
        assert p.is_file(), p
    blob = b.shared_lib.read_bytes()
    for registered in (b"vm.builtin.paged_attention_kv_cache_create", b"vm.builtin.kv_state_begin_forward",
                       b"ffi.Module.load_from_bytes.relax.VMExecutable", b"ffi.Module.load_from_file.so",
                       b"ffi.SystemLib", b"runtime.config_threadpool"):  # fmt: skip
        assert registered in blob, registered
    exported = subprocess.run(["nm", "-D", "--defined-only", str(b.shared_lib)], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    for sym in ("llama_aot_open", "llama_aot_prefill", "TVMFFIErrorSetRaisedFromCStrParts", "TVMBackendParallelLaunch"):
        assert sym in exported, sym
    # nothing from the wheel was copied into the repo
    assert not list(NATIVE.rglob("paged_kv_cache.cc")) and not list(NATIVE.rglob("vm.cc"))


def test_x86_driver_matches_python_runtime(native_x86, package_x86, reference, tmp_path):
    """Three prefill chunks, then decode steps across four KV pages, in both caches: the same
    tokens and logits (the same model.so) as the Python runtime."""
    assert package_config(package_x86)["runtime"]["num_kv_caches"] == 2
    out, rows = run_driver([], native_x86.run, package_x86, tmp=tmp_path)
    check(out, rows, reference, atol=1e-5)
    assert out["prefill_tokens"] == len(PROMPT) and out["prefill_seconds"] > 0


def test_x86_shared_library_driver(native_x86, package_x86, reference, tmp_path):
    out, rows = run_driver([], native_x86.run_shared, package_x86, tmp=tmp_path)
    check(out, rows, reference, atol=1e-5)


def test_x86_system_lib_static_link(native_x86, package_x86_android, reference, tmp_path):
    """lib/libmodel.a of an x86_64 phone build linked whole-archive into the driver; the C API finds
    the model with ffi.SystemLib(<prefix>) ("runtime.library": "system:<prefix>")."""
    assert set(package_config(package_x86_android)["library"]["objects"].values()) == {"elf-x86_64"}
    exe = link_system_lib_driver(native_x86, package_x86_android, tmp_path / "run_syslib", "g++")
    package = system_lib_view(package_x86_android, tmp_path / "syslib-pkg")
    assert package_config(package)["runtime"]["library"].startswith("system:")
    out, rows = run_driver([], exe, package, tmp=tmp_path)
    # generic x86-64 codegen against this CPU's: logits agree to float32 rounding, tokens exactly
    check(out, rows, reference, atol=1e-4)


def test_x86_driver_stops_at_context_window(native_x86, package_x86):
    prompt = [5] * (package_config(package_x86)["context_window"] - 6)
    out, _ = run_driver([], native_x86.run, package_x86, prompt=prompt, max_tokens=50, extra=["--no-stop-on-eos"])
    # prefill fills W-6 slots; each of the 6 decodes adds one; the 7th token needs no forward
    assert len(out["token_ids"]) == 7 and out["decode_steps"] == 6


@pytest.mark.parametrize("which", ["every-layer", "per-layer"])
def test_x86_driver_runs_windowed_packages(native_x86, checkpoint, tmp_path_factory, tmp_path, which):
    """--sliding-window packages (positions passed to the model, sliding caches): the same greedy tokens and
    logits as the Python engine. Windowed in every layer, generation goes past the 96-token context window
    with flat memory (llama_aot_context_window: INT32_MAX); in one KV-cache group only (the checkpoint's
    layer_types), the full group bounds it."""
    from runtime_stubs.engine import Engine

    from native_helpers import PACKAGE_OPTIONS_WINDOWED  # W 24, S 4

    src = checkpoint
    if which == "per-layer":
        src = tmp_path / "ckpt"
        shutil.copytree(checkpoint, src)
        config = json.loads((src / "config.json").read_text())
        layers = config["num_hidden_layers"]
        config["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        config["sliding_window"] = PACKAGE_OPTIONS_WINDOWED["sliding_window"]
        (src / "config.json").write_text(json.dumps(config))
    from compiler.compile import CompileOptions, compile_model

    options = {k: v for k, v in PACKAGE_OPTIONS_WINDOWED.items() if which == "every-layer" or k != "sliding_window"}
    pkg = compile_model(src, tmp_path_factory.mktemp(f"win-{which}") / "pkg", CompileOptions(**options))
    cfg = package_config(pkg)
    n = 120 if which == "every-layer" else 96 - len(PROMPT)  # past the 96-token window / up to it
    gen = Engine(pkg).generate(PROMPT, max_tokens=n, stop_on_eos=False, keep_logits=True)
    out, rows = run_driver([], native_x86.run, pkg, max_tokens=n, tmp=tmp_path, extra=["--no-stop-on-eos"])
    assert any(cfg["runtime"].get("kv_cache_windowed", [True]))
    assert out["token_ids"] == gen.token_ids and len(gen.token_ids) == n
    np.testing.assert_allclose(rows, np.stack(gen.logits), atol=1e-5, rtol=0)


def test_x86_driver_refuses_unknown_attention_options(native_x86, package_x86, tmp_path):
    """An attention option this runtime does not know (a newer compiler's) is refused with what to do, before
    anything is loaded, as `llama-aot run` refuses it."""
    newer = tmp_path / "newer"
    shutil.copytree(package_x86, newer)
    cfg = package_config(newer)
    cfg["attention"] = {"sliding_window": None, "sparse_attention": {"block": 64}}
    (newer / "llama-aot.json").write_text(json.dumps(cfg))
    rerecord(newer, "llama-aot.json")
    res = subprocess.run([str(native_x86.run), str(newer), "--prompt-ids", "1"], capture_output=True, text=True)
    assert res.returncode == 1 and '"sparse_attention"' in res.stderr and "recompile" in res.stderr


def test_x86_driver_refuses_a_package_for_missing_cpu_features(native_x86, package_x86, tmp_path):
    """A package built for instruction sets this CPU lacks is refused with what to do, as `llama-aot run` does,
    before its library is loaded (no SIGILL); the flags the CPU has pass."""
    from runtime_stubs.cpu_features import X86_FEATURES, host_cpu_flags

    flags = host_cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags on this system")
    absent = next((f for f in sorted(X86_FEATURES.values()) if f not in flags), "avx10_2")
    foreign = tmp_path / "foreign"
    shutil.copytree(package_x86, foreign)
    cfg = package_config(foreign)
    present = sorted(flags & set(X86_FEATURES.values()))[:2]
    cfg["target"] = {**cfg.get("target", {}), "cpu_features": [*present, absent],
                     "tvm_host": {"kind": "llvm", "mcpu": "some-future-cpu"}}
    (foreign / "llama-aot.json").write_text(json.dumps(cfg))
    rerecord(foreign, "llama-aot.json")
    res = subprocess.run([str(native_x86.run), str(foreign), "--prompt-ids", "1"], capture_output=True, text=True)
    assert res.returncode == 1 and f"a CPU with {absent} (-mcpu some-future-cpu)" in res.stderr
    assert "--target host" in res.stderr  # the present flags are not listed: they come first in cpu_features
    cfg["target"]["cpu_features"] = present
    (foreign / "llama-aot.json").write_text(json.dumps(cfg))
    rerecord(foreign, "llama-aot.json")
    res = subprocess.run([str(native_x86.run), str(foreign), "--prompt-ids", "1", "--max-tokens", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-1000:]


def test_x86_driver_errors(native_x86, package_x86, tmp_path):
    res = subprocess.run([str(native_x86.run), str(tmp_path / "missing"), "--prompt-ids", "1"], capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 1 and "llama-aot.json" in res.stderr
    res = subprocess.run([str(native_x86.run), str(package_x86)], capture_output=True, text=True)
    assert res.returncode == 2 and "--prompt-ids" in res.stderr
    too_long = ",".join(["1"] * (package_config(package_x86)["context_window"] + 1))
    res = subprocess.run([str(native_x86.run), str(package_x86), "--prompt-ids", too_long], capture_output=True, text=True)
    assert res.returncode == 1 and "context window" in res.stderr
    broken = tmp_path / "broken"
    shutil.copytree(package_x86, broken)
    with open(broken / "params" / "shard-00000.bin", "r+b") as f:
        f.truncate(100)
    res = subprocess.run([str(native_x86.run), str(broken), "--prompt-ids", "1"], capture_output=True, text=True)
    assert res.returncode == 1 and "truncated" in res.stderr
    # a manifest one parameter short fails inside the forward pass: the step is closed, the
    # sequence reset, and TVM's message is passed through
    short = tmp_path / "short"
    shutil.copytree(package_x86, short)
    manifest = json.loads((short / "params" / "manifest.json").read_text())
    manifest["params"].pop()
    (short / "params" / "manifest.json").write_text(json.dumps(manifest))
    rerecord(short, "params/manifest.json")
    res = subprocess.run([str(native_x86.run), str(short), "--prompt-ids", "1,2"], capture_output=True, text=True)
    assert res.returncode == 1 and "runtime error" in res.stderr and "sequence was reset" in res.stderr
    assert "Tuple with" in res.stderr


def test_x86_driver_checks_the_package_before_loading(native_x86, package_x86, tmp_path):
    """The C runtime checks checksums.json as `llama-aot run` does, before loading any code: a library with one
    byte changed, an unlisted library in lib/, a weight shard whose tail changed, a missing checksums.json: each
    refused with one line naming the file and what to do."""
    lib = package_config(package_x86)["runtime"]["library"]

    def broken(name, edit):
        pkg = tmp_path / name
        shutil.copytree(package_x86, pkg)
        edit(pkg)
        res = subprocess.run([str(native_x86.run), str(pkg), "--prompt-ids", "1"], capture_output=True, text=True)
        assert res.returncode == 1, res.stderr
        return res.stderr.strip().splitlines()[-1]

    def flip(path, offset):
        data = bytearray(path.read_bytes())
        data[offset] ^= 1
        path.write_bytes(bytes(data))

    err = broken("lib-byte", lambda p: flip(p / lib, len((p / lib).read_bytes()) // 2))
    assert lib in err and "fails its sha256 check" in err and "recompile or re-copy" in err
    err = broken("unlisted", lambda p: shutil.copyfile(p / lib, p / "lib" / "extra.so"))
    assert "extra.so is not listed in checksums.json" in err
    err = broken("shard-tail", lambda p: flip(p / "params" / "shard-00000.bin", (p / "params" / "shard-00000.bin").stat().st_size - 1))
    assert "shard-00000.bin fails its sha256 check" in err
    err = broken("no-checksums", lambda p: (p / "checksums.json").unlink())
    assert "checksums.json is missing" in err


CTYPES_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys
    lib = ctypes.CDLL(sys.argv[1])  # RTLD_LOCAL, like JNI's System.loadLibrary
    lib.llama_aot_last_error.restype = ctypes.c_char_p
    lib.llama_aot_sample.restype = ctypes.c_int32
    res = {}
    h = ctypes.c_void_p()
    res["missing"] = lib.llama_aot_open(sys.argv[2].encode() + b"/nope", None, ctypes.byref(h))
    res["bad_device"] = lib.llama_aot_open(sys.argv[2].encode(), b"vulkan:0", ctypes.byref(h))
    res["bad_device_msg"] = lib.llama_aot_last_error().decode()
    assert lib.llama_aot_open(sys.argv[2].encode(), b"cpu", ctypes.byref(h)) == 0, lib.llama_aot_last_error()
    V = lib.llama_aot_vocab_size(h)
    res["vocab"] = V
    ids = (ctypes.c_int32 * 3)(1, 2, 3)
    logits = (ctypes.c_float * V)()
    res["prefill"] = lib.llama_aot_prefill(h, ids, 3, logits)
    res["seq_len"] = lib.llama_aot_seq_len(h)
    res["greedy"] = lib.llama_aot_sample(h, logits, ctypes.c_float(0), ctypes.c_float(1), ctypes.c_uint64(0))
    res["argmax"] = max(range(V), key=lambda i: logits[i])
    res["bad_token"] = lib.llama_aot_decode(h, V + 5, logits)
    res["bad_token_msg"] = lib.llama_aot_last_error().decode()
    res["null_logits_decode"] = lib.llama_aot_decode(h, 1, None)
    res["reset"] = lib.llama_aot_reset(h)
    res["seq_len_after_reset"] = lib.llama_aot_seq_len(h)
    # sampling: two live tokens with probabilities 1/4 and 3/4 at temperature 1
    two = (ctypes.c_float * V)(*([-1e30] * V))
    two[7], two[9] = 0.0, 1.0986123
    picks = [lib.llama_aot_sample(h, two, ctypes.c_float(1.0), ctypes.c_float(1.0), ctypes.c_uint64(s))
             for s in range(4000)]
    res["p9"] = picks.count(9) / len(picks)
    res["only_7_9"] = set(picks) <= {7, 9}
    res["top_p_keeps_best"] = {lib.llama_aot_sample(h, two, ctypes.c_float(1.0), ctypes.c_float(0.5),
                                                    ctypes.c_uint64(s)) for s in range(200)} == {9}
    res["deterministic"] = lib.llama_aot_sample(h, two, ctypes.c_float(1.0), ctypes.c_float(1.0),
                                                ctypes.c_uint64(123)) == picks[123]
    lib.llama_aot_close(h)
    lib.llama_aot_close(None)
    print(json.dumps(res))
    """
)


def test_c_api_through_ctypes_rtld_local_bind_now(native_x86, package_x86, tmp_path):
    """The shared runtime loaded RTLD_LOCAL (as JNI does) still serves the model .so, even with
    immediate binding (as Android's linker does): llama_aot_open promotes itself to RTLD_GLOBAL."""
    script = tmp_path / "c_api.py"
    script.write_text(CTYPES_SCRIPT)
    env = dict(os.environ, LD_BIND_NOW="1")
    res = subprocess.run([sys.executable, str(script), str(native_x86.shared_lib), str(package_x86)], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["missing"] == -2  # LLAMA_AOT_ERR_IO
    # a CPU package opened on Vulkan: refused (runtime built without Vulkan, or package/device mismatch)
    assert r["bad_device"] == -6 and (
        "device_api.vulkan" in r["bad_device_msg"] or 'compiled for device "cpu"' in r["bad_device_msg"]
    )
    assert r["vocab"] == package_config(package_x86)["model"]["vocab_size"] and r["prefill"] == 0 and r["seq_len"] == 3
    assert r["greedy"] == r["argmax"]
    assert r["bad_token"] == -1 and "outside" in r["bad_token_msg"]
    assert r["null_logits_decode"] == 0
    assert r["reset"] == 0 and r["seq_len_after_reset"] == 0
    assert r["only_7_9"] and abs(r["p9"] - 0.75) < 0.03
    assert r["top_p_keeps_best"] and r["deterministic"]


def test_x86_turns_match_the_python_engine(native_x86, package_x86):
    """The turn API (llama_aot_generate) over three turns of one conversation, each appended to the KV cache
    after the previous turn's last token: the same greedy tokens as the Python engine generating from the whole
    conversation with reuse_cache, and the streaming callback sees exactly the turn's tokens."""
    from runtime_stubs.engine import Engine

    prompt, then, n = PROMPT[:10], [[50, 51, 52], [60, 61]], 8
    args = [str(native_x86.run), str(package_x86), "--prompt-ids", ",".join(map(str, prompt)), "--max-tokens", str(n)]
    for ids in then:
        args += ["--then-ids", ",".join(map(str, ids))]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    engine, conversation, want = Engine(package_x86), list(prompt), []
    for turn in range(len(then) + 1):
        if turn:
            conversation += want[-1] + then[turn - 1]
        want.append(engine.generate(conversation, max_tokens=n, reuse_cache=True).token_ids)
    assert out["turns"] == want and all(len(t) == n for t in want)
    assert out["streamed_matches"] and out["streamed"] == [t for turn in want for t in turn]
    assert out["seq_len"] == len(conversation) + n - 1  # the last token of the last turn is not fed


TURNS_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys, threading
    lib = ctypes.CDLL(sys.argv[1])
    lib.llama_aot_last_error.restype = ctypes.c_char_p
    lib.llama_aot_generate.restype = ctypes.c_int32

    class Params(ctypes.Structure):
        _fields_ = [("max_tokens", ctypes.c_int32), ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                    ("seed", ctypes.c_uint64), ("stop_on_eos", ctypes.c_int)]

    CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_void_p)
    h = ctypes.c_void_p()
    assert lib.llama_aot_open(sys.argv[2].encode(), b"cpu", ctypes.byref(h)) == 0, lib.llama_aot_last_error()
    ids = (ctypes.c_int32 * 4)(3, 4, 5, 6)
    out = (ctypes.c_int32 * 16)()
    res, seen = {}, []
    second, cancelled = threading.Event(), threading.Event()

    def on_token(token, _user):  # runs on the generating thread
        seen.append(token)
        if len(seen) == 2:
            second.set()
            cancelled.wait(30)  # the main thread cancels while this turn is still running
        return 0

    cb = CB(on_token)
    box = {}
    worker = threading.Thread(target=lambda: box.update(rc=lib.llama_aot_generate(
        h, ids, 4, ctypes.byref(Params(16, 0.0, 1.0, 0, 0)), cb, None, out, 16)))
    worker.start()
    second.wait(30)
    lib.llama_aot_cancel(h)  # from another thread than the one generating
    cancelled.set()
    worker.join(60)
    res["cancel_rc"], res["delivered"] = box["rc"], len(seen)
    res["seq_len_after_cancel"] = lib.llama_aot_seq_len(h)
    # the cancel was consumed: the next turn runs; a callback returning nonzero stops after that token
    stop_at = []
    stopper = CB(lambda token, _u: (stop_at.append(token), len(stop_at) == 3)[1])
    more = (ctypes.c_int32 * 1)(out[1])
    res["stop_rc"] = lib.llama_aot_generate(h, more, 1, ctypes.byref(Params(16, 0.7, 0.9, 5, 0)), stopper, None, None, 0)
    res["stop_seen"] = len(stop_at)
    res["bad_params"] = lib.llama_aot_generate(h, more, 1, ctypes.byref(Params(0, 0.0, 1.0, 0, 0)), None, None, None, 0)
    res["bad_params_msg"] = lib.llama_aot_last_error().decode()
    lib.llama_aot_reset(h)
    res["null_callback"] = lib.llama_aot_generate(h, ids, 4, ctypes.byref(Params(5, 0.0, 1.0, 0, 0)), None, None, out, 16)
    res["null_callback_ids"] = list(out[:5])
    lib.llama_aot_close(h)
    print(json.dumps(res))
    """
)


def test_c_api_turn_streaming_and_cancel(native_x86, package_x86, tmp_path):
    """llama_aot_cancel from another thread stops a running llama_aot_generate after its current token
    (LLAMA_AOT_ERR_CANCELLED, the tokens so far delivered and kept); the cancel is consumed, a callback that
    returns nonzero stops the turn at that token, bad params are refused, and no callback is needed."""
    from runtime_stubs.engine import Engine

    script = tmp_path / "turns.py"
    script.write_text(TURNS_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(native_x86.shared_lib), str(package_x86)],
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["cancel_rc"] == -7 and r["delivered"] == 2
    assert r["seq_len_after_cancel"] == 4 + 2  # the prompt and both delivered tokens (the second was fed)
    assert r["stop_rc"] == 3 and r["stop_seen"] == 3
    assert r["bad_params"] == -1 and "max_tokens > 0" in r["bad_params_msg"]
    assert r["null_callback"] == 5
    assert r["null_callback_ids"] == Engine(package_x86).generate([3, 4, 5, 6], max_tokens=5, stop_on_eos=False).token_ids


def test_jni_binding_runs(native_x86, package_x86, reference, tmp_path):
    need("javac", "java")
    if native_x86.jni_lib is None:
        pytest.skip("no JDK include directory (jni.h) found: libllama_aot_jni was not built")
    classes = tmp_path / "classes"
    subprocess.run(["javac", "-d", str(classes), "-h", str(tmp_path / "hdr"), str(NATIVE / "jni" / "LlamaAot.java"),
                    str(REPO / "tests" / "native" / "java" / "JniSmoke.java")], check=True)  # fmt: skip
    # every native method javac declares is defined by llama_aot_jni.cc
    declared = {ln.split()[-1] for ln in (tmp_path / "hdr" / "org_llamaaot_LlamaAot.h").read_text().splitlines()
                if "JNICALL Java_" in ln}  # fmt: skip
    defined = subprocess.run(["nm", "-D", "--defined-only", str(native_x86.jni_lib)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert declared and all(name in defined for name in declared), declared
    env = dict(os.environ, LD_BIND_NOW="1")
    res = subprocess.run(["java", f"-Djava.library.path={native_x86.build_dir}", "-cp", str(classes), "JniSmoke",
                          str(package_x86), str(MAX_TOKENS), ",".join(map(str, PROMPT))], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = dict(kv.split("=", 1) for ln in res.stdout.split("\n") for kv in ln.split() if "=" in kv)
    assert [int(t) for t in lines["tokens"].split(",")] == reference[0]
    assert abs(float(lines["first_logit"]) - float(reference[1][0][0])) < 1e-5
    assert lines["error_path"] == "-1" and lines["open_error"] == "-2"
    assert lines["turn"] == lines["streamed"] == lines["tokens"]  # generate() = the sample/decode loop, streamed
    assert lines["cancelled"] == "-7" and lines["seen"] == "2"  # cancel() from another thread


def test_compat_headers_match_tvm_formats(native_x86, tmp_path):
    """Our io.h/serializer.h/bytes_io.h read what the wheel's libtvm writes and write the same bytes."""
    import tvm

    tvm_dir, ffi_dir = native_build.wheel_dirs()
    exe = tmp_path / "compat_roundtrip"
    cmd = ["nice", "-n", "19", "g++", "-std=c++17", "-O1", "-o", str(exe), str(REPO / "tests/native/compat_roundtrip.cc"),
           f"-I{NATIVE / 'compat'}", f"-I{NATIVE / 'compat/src/runtime'}", f"-I{tvm_dir / 'include'}",
           f"-I{ffi_dir / 'include'}", f"-I{ffi_dir / '3rdparty/dlpack/include'}",
           str(native_x86.shared_lib), f"-Wl,-rpath,{native_x86.build_dir}"]  # fmt: skip
    subprocess.run(cmd, check=True)
    rng = np.random.default_rng(1)
    params = {
        "w": rng.standard_normal((3, 5)).astype("float32"),
        "idx": np.arange(7, dtype="int64"),
        "h": rng.standard_normal((2, 2, 2)).astype("float16"),
        "b": np.array([1, 0, 255], dtype="uint8"),
        "scalar": np.array(3.5, dtype="float64"),
    }
    src = tmp_path / "in.params"
    tvm.runtime.save_param_dict_to_file({k: tvm.runtime.tensor(v) for k, v in params.items()}, str(src))
    dst = tmp_path / "out.params"
    res = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True, check=True)
    assert "base64 ok" in res.stdout
    listed = {ln.split()[0]: ln.split()[1:3] for ln in res.stdout.splitlines() if not ln.startswith("base64")}
    assert listed["w"] == ["float32", "[3,5]"] and listed["h"] == ["float16", "[2,2,2]"]
    assert listed["scalar"] == ["float64", "[]"]
    back = tvm.runtime.load_param_dict_from_file(str(dst))
    assert set(back) == set(params)
    for k, v in params.items():
        np.testing.assert_array_equal(back[k].numpy(), v)
    assert dst.stat().st_size == src.stat().st_size


# ---------------------------------------------------------------------------------------------
# aarch64 (Debian cross g++, run under qemu-user)
# ---------------------------------------------------------------------------------------------


def test_aarch64_runtime_builds(native_aarch64):
    b = native_aarch64
    for p in (b.static_lib, b.shared_lib, b.run, b.run_shared):
        assert p.is_file(), p
    with open(b.shared_lib, "rb") as f:
        elf = f.read(20)
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64


def test_aarch64_driver_under_qemu_matches_python_runtime(native_aarch64, package_aarch64, reference, tmp_path):
    out, rows = run_driver(native_aarch64.runner(), native_aarch64.run, package_aarch64, tmp=tmp_path)
    # different codegen (aarch64 NEON/FMA): logits agree to float32 rounding, tokens exactly
    check(out, rows, reference, atol=1e-4)


def test_aarch64_shared_library_driver_under_qemu(native_aarch64, package_aarch64, reference, tmp_path):
    out, rows = run_driver(native_aarch64.runner(), native_aarch64.run_shared, package_aarch64, tmp=tmp_path)
    check(out, rows, reference, atol=1e-4)


def test_aarch64_system_lib_static_link_under_qemu(native_aarch64, package_aarch64, reference, tmp_path):
    exe = link_system_lib_driver(native_aarch64, package_aarch64, tmp_path / "run_syslib", "aarch64-linux-gnu-g++")
    package = system_lib_view(package_aarch64, tmp_path / "syslib-pkg")
    out, rows = run_driver(native_aarch64.runner(), exe, package, tmp=tmp_path)
    check(out, rows, reference, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# headers and toolchains the phone builds use (clang: NDK and Xcode are clang)
# ---------------------------------------------------------------------------------------------


def test_c_header_is_plain_c99_and_modulemap_imports(tmp_path):
    need("gcc")
    src = tmp_path / "use.c"
    src.write_text('#include "llama_aot.h"\nint f(void) { llama_aot_model* m = 0; return llama_aot_open("x", 0, &m); }\n')
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only",
                    f"-I{NATIVE / 'include'}", str(src)], check=True)  # fmt: skip
    need("clang")
    objc = tmp_path / "use.m"
    objc.write_text("@import LlamaAot;\nint g(void) { return llama_aot_vocab_size(0); }\n")
    subprocess.run(["clang", "-fmodules", "-fsyntax-only", f"-fmodule-map-file={NATIVE / 'include/module.modulemap'}",
                    f"-I{NATIVE / 'include'}", "-x", "objective-c", str(objc)], check=True)  # fmt: skip
    bridging = tmp_path / "bridge.c"
    bridging.write_text('#include "LlamaAot-Bridging.h"\n')
    subprocess.run(["clang", "-fsyntax-only", f"-I{NATIVE / 'include'}", str(bridging)], check=True)


def test_clang_compiles_our_sources_and_compat_users_for_aarch64():
    """Syntax check with clang for aarch64 of our C++ and of the wheel files that include compat/."""
    need("clang++", "aarch64-linux-gnu-g++")
    tvm_dir, ffi_dir = native_build.wheel_dirs()
    rt = tvm_dir / "src" / "runtime"
    inc = [f"-I{NATIVE / 'include'}", f"-I{NATIVE / 'compat'}", f"-I{NATIVE / 'compat/src/runtime/vm'}",
           f"-I{NATIVE / 'compat/src/runtime'}", "-isystem", str(tvm_dir / "include"), "-isystem",
           str(ffi_dir / "include"), "-isystem", str(ffi_dir / "3rdparty/dlpack/include")]  # fmt: skip
    files = [NATIVE / "src/llama_aot.cc", NATIVE / "src/package.cc", NATIVE / "src/sha256.cc", NATIVE / "tools/llama_aot_run.cc",
             rt / "vm/executable.cc", rt / "tensor.cc", rt / "file_utils.cc", rt / "vm/vm.cc",
             rt / "vm/paged_kv_cache.cc", rt / "thread_pool.cc"]  # fmt: skip
    for f in files:
        res = subprocess.run(["nice", "-n", "19", "clang++", "--target=aarch64-linux-gnu", "-std=c++17", "-fsyntax-only",
                              "-Wall", "-Wextra", "-Wno-unused-parameter", *inc, str(f)], capture_output=True, text=True)  # fmt: skip
        ours = [ln for ln in res.stderr.splitlines() if str(NATIVE) in ln and ("error" in ln or "warning" in ln)]
        assert res.returncode == 0 and not ours, f"{f}:\n{res.stderr[-3000:]}"
