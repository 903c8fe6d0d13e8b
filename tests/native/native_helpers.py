"""Shared helpers of the native-runtime tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runtime_stubs import native_build  # noqa: E402

NATIVE = REPO / "runtime_stubs" / "native"
# q4f16 (packed 4-bit weights, f32 activations on CPUs), prefill chunk 16, KV pages of 16 tokens
# int8_activations off: the host package is the float reference of the phone builds (which have no VNNI kernel)
PACKAGE_OPTIONS = dict(quant="q4f16", prefill_chunk=16, context_window=96, int8_activations=False)
PACKAGE_OPTIONS_WINDOWED = dict(PACKAGE_OPTIONS, sliding_window=24, attention_sinks=4)
PROMPT = list(range(3, 40))  # 37 tokens: three prefill chunks of 16
MAX_TOKENS = 40  # 77 tokens in all: crosses four 16-token pages, inside the 96-token window
PHONE_SOC = "snapdragon-8-gen-3"  # aarch64-linux-android: runs under qemu-aarch64 on Debian's glibc
ANDROID_X86_64 = HERE / "android-x86-64.toml"  # an x86_64 phone target: libmodel.a for this host


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"needs {', '.join(missing)} (see docs/runtime.md for the Debian packages)"
        if os.environ.get("LLAMA_AOT_REQUIRE_NATIVE") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def need_phone_toolchain() -> None:
    """What compiler/export.py links phone packages with: clang, lld, llvm-ar, llvm-nm."""
    need("clang", "ld.lld")
    for names in (("llvm-ar", "llvm-ar-14"), ("llvm-nm", "llvm-nm-14")):  # what compiler/export.py accepts
        if not any(shutil.which(n) for n in names):
            need(names[0])


def build(arch: str) -> native_build.NativeBuild:
    need("cmake")
    if arch == "aarch64":
        need("aarch64-linux-gnu-g++", "qemu-aarch64")
    b = native_build.build_native(arch)
    where = "cached" if b.cached else f"built in {b.seconds:.0f} s"
    print(f"\n[native runtime {arch}: {where}, {b.build_dir}]")
    return b


def engine_reference(package: Path, prompt, max_tokens: int, stop_on_eos: bool = True):
    """(tokens, logits rows) of runtime_stubs.engine.Engine (TVM's Python runtime) on a host package."""
    from runtime_stubs.engine import Engine

    gen = Engine(package).generate(prompt, max_tokens=max_tokens, stop_on_eos=stop_on_eos, keep_logits=True)
    assert len(gen.token_ids) == max_tokens, "stopped early: the run no longer crosses the pages it should"
    return gen.token_ids, np.stack(gen.logits).astype("float32")


def run_driver(prefix: list[str], exe: Path, package: Path, prompt=PROMPT, max_tokens=MAX_TOKENS, tmp=None,
               extra=(), env=None):
    """Run llama_aot_run; return (json result, logits rows [tokens, vocab] or None without tmp)."""
    args = [*prefix, str(exe), str(package), "--prompt-ids", ",".join(map(str, prompt)),
            "--max-tokens", str(max_tokens), *extra]  # fmt: skip
    logits_path = None
    if tmp is not None:
        logits_path = Path(tmp) / f"logits-{exe.name}-{Path(package).name}.bin"
        args += ["--logits-out", str(logits_path)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, f"{' '.join(args)}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    out = json.loads(res.stdout)
    rows = None
    if logits_path is not None:
        rows = np.fromfile(logits_path, dtype="<f4").reshape(len(out["token_ids"]), -1)
    return out, rows


def check(out, rows, reference, prompt=PROMPT, atol: float | None = None, rel_tol: float | None = None):
    """Same prompt, tokens and decode steps as the reference; logits within atol, or within rel_tol
    of the reference's logit scale (max |logit|)."""
    tokens, ref_rows = reference
    assert out["prompt_ids"] == list(prompt)
    assert out["token_ids"] == tokens
    assert out["decode_steps"] == len(tokens) - 1
    assert rows.shape == ref_rows.shape
    scale = float(np.abs(ref_rows).max())
    worst = float(np.abs(rows - ref_rows).max())
    print(f"\n[max |logit diff| {worst:.3g} = {worst / scale:.3g} of the logit scale {scale:.3g}]")
    np.testing.assert_allclose(rows, ref_rows, rtol=0, atol=atol if rel_tol is None else rel_tol * scale)


def link_system_lib_driver(build: native_build.NativeBuild, package: Path, out: Path, cxx: str) -> Path:
    """llama_aot_run with the package's lib/libmodel.a and the whole static runtime linked in."""
    need(cxx)
    cmd = ["nice", "-n", "19", cxx, "-O2", "-o", str(out), str(NATIVE / "tools" / "llama_aot_run.cc"),
           f"-I{build.include_dir}", "-Wl,--whole-archive", str(Path(package) / "lib" / "libmodel.a"),
           str(build.static_lib), "-Wl,--no-whole-archive", *build.static_link_libs]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def rerecord(package: Path, *files: str) -> None:
    """After a test edits ``files`` of a package on purpose: their records in checksums.json rewritten (the
    runtimes check every file against it before loading; the edit is then what the test is about)."""
    from runtime_stubs.integrity import CHECKSUMS, file_record

    doc = json.loads((package / CHECKSUMS).read_text())
    for rel in files:
        doc["files"][rel] = file_record(package / rel)
    (package / CHECKSUMS).write_text(json.dumps(doc, indent=1, sort_keys=True))


def system_lib_view(package: Path, dest: Path) -> Path:
    """The package as an app that links lib/libmodel.a sees it: llama-aot.json says
    "system:<prefix>"; the weights are the same files (params/ is a symlink); no lib/ (it is in the app)."""
    cfg = json.loads((package / "llama-aot.json").read_text())
    cfg["runtime"]["library"] = "system:" + cfg["library"]["system_lib_prefix"]
    dest.mkdir()
    (dest / "params").symlink_to(package / "params", target_is_directory=True)
    for p in package.iterdir():  # everything else the app bundles (tokenizer, generation config, checksums)
        if p.name not in ("lib", "params"):
            (shutil.copytree if p.is_dir() else shutil.copyfile)(p, dest / p.name)
    (dest / "llama-aot.json").write_text(json.dumps(cfg, indent=1))
    rerecord(dest, "llama-aot.json")
    return dest


# ---------------------------------------------------------------------------------------------
# TVM's own prebuilt aarch64 runtime (the manylinux wheels on PyPI), for cross-checks under qemu
# ---------------------------------------------------------------------------------------------

WHEEL_PLATFORM = "manylinux_2_28_aarch64"


@dataclasses.dataclass
class PrebuiltTVM:
    """libtvm_runtime.so / libtvm_ffi.so and the headers of the apache-tvm(-ffi) aarch64 wheels."""

    root: Path  # holds tvm/{lib,include} and tvm_ffi/{lib,include,3rdparty}
    versions: dict[str, str]

    @property
    def lib_dirs(self) -> list[Path]:
        return [self.root / "tvm" / "lib", self.root / "tvm_ffi" / "lib"]

    @property
    def include_dirs(self) -> list[Path]:
        return [self.root / "tvm" / "include", self.root / "tvm_ffi" / "include",
                self.root / "tvm_ffi" / "3rdparty" / "dlpack" / "include"]  # fmt: skip


def _installed_versions() -> dict[str, str]:
    import importlib.metadata as md

    return {dist: md.version(dist) for dist in ("apache-tvm", "apache-tvm-ffi")}


def prebuilt_tvm_aarch64() -> PrebuiltTVM:
    """Download (once; cached under build/tvm-wheels/) the aarch64 wheels of the installed TVM
    versions and extract their runtime libraries and headers.  Skips when PyPI is unreachable."""
    versions = _installed_versions()
    tag = "-".join(f"{d}-{v}" for d, v in versions.items())
    cache = REPO / "build" / "tvm-wheels" / f"{WHEEL_PLATFORM}-{tag}"
    root = cache / "root"
    stamp = cache / "extracted.json"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():
            wheels = sorted(cache.glob("*.whl"))
            if len(wheels) != 2:
                _download_wheels(cache, versions)
                wheels = sorted(cache.glob("*.whl"))
            if root.exists():
                shutil.rmtree(root)
            wanted = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so", "tvm/include/",
                      "tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/")  # fmt: skip
            for whl in wheels:
                with zipfile.ZipFile(whl) as z:
                    z.extractall(root, [n for n in z.namelist() if n.startswith(wanted)])
            stamp.write_text(json.dumps({"wheels": [w.name for w in wheels], **versions}, indent=1))
    out = PrebuiltTVM(root, versions)
    for p in out.lib_dirs:
        assert any(p.glob("libtvm_*.so")), f"{p}: no library extracted from the wheel"
    return out


def _download_wheels(cache: Path, versions: dict[str, str]) -> None:
    import subprocess

    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", WHEEL_PLATFORM,
           "--python-version", py, "--disable-pip-version-check", "--timeout", "30", "--retries", "1",
           *[f"{d}=={v}" for d, v in versions.items()], "-d", str(tmp)]  # fmt: skip
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        res = None
    got = sorted(tmp.glob("*.whl"))
    if res is None or res.returncode != 0 or len(got) != 2:
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [] if res is None else [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        cause = [ln for ln in lines if any(k in ln for k in ("onnect", "resolve", "SSL", "Timeout"))]
        why = "timed out" if res is None else " / ".join(dict.fromkeys(cause[:1] + lines[-1:])) or "pip failed"
        why = why[:400]
        pytest.skip(f"cannot download the {WHEEL_PLATFORM} wheels of {versions} from PyPI (unreachable?): {why}")
    for w in got:
        w.rename(cache / w.name)
    shutil.rmtree(tmp, ignore_errors=True)
