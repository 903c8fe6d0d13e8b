"""SoC registry: shipped files load and validate; user files by path and $LLAMA_AOT_SOC_PATH;
unknown names and broken files give one-line errors naming the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime_stubs.errors import LlamaAotError
from targets.describe import list_text, show_text
from targets.registry import iter_facts
from targets.registry import ENV_VAR, SHIPPED_DIR, SocSpec, list_socs, load_soc

REQUIRED = {
    "snapdragon-8-gen-3",
    "snapdragon-8-elite",
    "dimensity-9300",
    "exynos-2400",
    "google-tensor-g3",
    "google-tensor-g4",
    "apple-a17-pro",
    "apple-a18-pro",
    "host",
}
GOOD = SHIPPED_DIR / "snapdragon-8-gen-3.toml"


@pytest.fixture(autouse=True)
def _no_user_dirs(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def socs() -> dict[str, SocSpec]:
    return {s.name: s for s in list_socs()}


def test_every_shipped_soc_loads(socs):
    shipped = {p.stem for p in SHIPPED_DIR.glob("*.toml")}
    assert REQUIRED <= shipped
    assert set(socs) == shipped
    for name in REQUIRED:
        assert load_soc(name).name == name


def test_every_fact_has_source_and_unconfirmed_ones_a_note(socs):
    for soc in socs.values():
        facts = list(iter_facts(soc))
        assert len(facts) >= (14 if soc.is_host else 20), soc.name
        for key, fact in facts:
            assert fact.source.strip(), (soc.name, key)
            if not fact.confirmed:
                assert fact.note.strip(), (soc.name, key)


def test_gpu_apis_per_vendor(socs):
    assert socs["snapdragon-8-gen-3"].gpu_apis == ("opencl", "vulkan")
    assert socs["snapdragon-8-elite"].gpu_apis == ("opencl", "vulkan")
    assert socs["exynos-2400"].gpu_apis == ("vulkan",)
    assert socs["exynos-2400"].tvm_device_target("opencl") is None
    for name in ("dimensity-9300", "google-tensor-g3", "google-tensor-g4"):
        assert set(socs[name].gpu_apis) == {"opencl", "vulkan"}
        assert socs[name].gpu.subgroup_sizes.value == (16,)
        assert socs[name].gpu.shared_memory_on_chip.value is False
    for name in ("apple-a17-pro", "apple-a18-pro"):
        assert socs[name].gpu_apis == ("metal",)
        assert socs[name].tvm_host_target()["mtriple"] == "arm64-apple-ios"
    host = socs["host"]
    assert host.gpu_apis == () and host.tvm_device_target() is None


def test_threads_isa_and_derived_numbers(socs):
    sd = socs["snapdragon-8-gen-3"]
    assert sd.num_threads == 6  # X4 + 5 A720, not the A520s
    t = sd.tvm_host_target()
    assert t["mtriple"] == "aarch64-linux-android" and t["num-cores"] == 6
    assert "-sve" in t["mattr"]  # Android does not enable SVE on 8 Gen 3
    assert "+sve2" in socs["exynos-2400"].tvm_host_target()["mattr"]
    assert socs["snapdragon-8-elite"].num_threads == 8
    assert socs["apple-a17-pro"].num_threads == 2
    # 4.22 GB/token (Llama-3-8B at 4.5 bits) on 76.8 GB/s -> ~18 tokens/s (phone-socs.md)
    assert sd.decode_ceiling_tokens_per_s(4.22e9) == pytest.approx(76.8 / 4.22)
    with pytest.raises(LlamaAotError):
        sd.decode_ceiling_tokens_per_s(0)
    cp = sd.cache_params()
    assert cp["line_bytes"] == 64 and cp["l1d_bytes"] == 64 * 1024
    assert set(cp) == {"l1d_bytes", "l2_bytes", "l2_shared_cores", "l3_bytes", "slc_bytes", "line_bytes"}
    assert sd.usable_memory_bytes == int(4.5e9)
    with pytest.raises(LlamaAotError, match="unknown GPU API 'cuda'"):
        sd.tvm_device_target("cuda")


def test_host_is_detected(socs):
    import os

    host = socs["host"]
    assert host.is_host
    assert host.num_threads == (os.cpu_count() or 1)
    assert host.cpu.mcpu.source.startswith("detected")
    assert host.cache_params()["l1d_bytes"] > 0
    assert host.usable_memory_bytes > 0
    from targets.host import host_target_dict

    assert host.tvm_host_target() == host_target_dict(host.num_threads)


def test_host_file_may_pin_another_mcpu(tmp_path):
    """A host file (detect = "host") that pins cpu.mcpu builds for that CPU with this machine's caches, still as a
    host build (no mtriple): how an AVX2-only CPU is emulated here (issue 11 §3)."""
    from schedules.cpu.params import CPUParams
    from targets.cpu_facts import CPUFacts

    path = tmp_path / "host-haswell.toml"
    path.write_text(
        'name = "host-haswell"\ndisplay_name = "this machine as haswell"\ndetect = "host"\n'
        '[cpu]\nmcpu = { value = "haswell", source = "test" }\n'
        '[memory]\npeak_bandwidth_gbs = { value = 30.0, source = "test" }\n'
    )
    soc = load_soc(path)
    target = soc.tvm_host_target()
    assert target["mcpu"] == "haswell" and "mtriple" not in target
    params = CPUParams.for_build(target, facts=CPUFacts.from_soc(soc))
    host = CPUFacts.host()
    assert params.vector_bits == 256 and (params.l1d_bytes, params.l2_bytes) == (host.l1d_bytes, host.l2_bytes)


def test_unknown_name_suggests_close_names():
    with pytest.raises(LlamaAotError) as e:
        load_soc("snapdragon-8-gen3")
    msg = str(e.value)
    assert "snapdragon-8-gen-3" in msg and "\n" not in msg
    with pytest.raises(LlamaAotError, match="tensor-g3"):
        load_soc("tensor-g3")


def _user_file(tmp_path: Path, name: str, text: str | None = None) -> Path:
    text = GOOD.read_text() if text is None else text
    text = text.replace('name = "snapdragon-8-gen-3"', f'name = "{name}"')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_user_file_by_path(tmp_path):
    path = _user_file(tmp_path, "my-phone")
    soc = load_soc(str(path))
    assert soc.name == "my-phone" and soc.path == str(path)
    assert load_soc(path).name == "my-phone"  # pathlib.Path works too


def test_user_dir_from_env(tmp_path, monkeypatch):
    _user_file(tmp_path, "my-phone")
    # a user file may also replace a shipped SoC
    _user_file(tmp_path, "exynos-2400", GOOD.read_text().replace(
        'name = "snapdragon-8-gen-3"', 'name = "exynos-2400"').replace(
        "value = 76.8,", "value = 99.0,"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert load_soc("my-phone").name == "my-phone"
    assert load_soc("exynos-2400").memory.peak_bandwidth_gbs.value == 99.0
    names = [s.name for s in list_socs()]
    assert "my-phone" in names and names.count("exynos-2400") == 1
    assert "my-phone" in list_text()


def _broken(tmp_path: Path, old: str, new: str) -> str:
    text = GOOD.read_text()
    assert old in text
    path = _user_file(tmp_path, "broken", text.replace(old, new, 1))
    with pytest.raises(LlamaAotError) as e:
        load_soc(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_key(tmp_path):
    line = re.search(r"^peak_bandwidth_gbs = .*$", GOOD.read_text(), re.M).group(0)
    msg = _broken(tmp_path, line + "\n", "")
    assert "memory.peak_bandwidth_gbs" in msg and "missing" in msg


def test_negative_bandwidth(tmp_path):
    msg = _broken(tmp_path, "value = 76.8,", "value = -76.8,")
    assert "memory.peak_bandwidth_gbs" in msg and "positive" in msg


def test_fact_without_source(tmp_path):
    msg = _broken(tmp_path, 'l1d_kib = { value = 64, source = "Arm Cortex-A720 TRM (32 or 64 KiB configurable)",',
                  "l1d_kib = { value = 64,")
    assert "cache.l1d_kib" in msg and "source" in msg


@pytest.mark.parametrize(
    "old,new,key",
    [
        ('value = ["opencl", "vulkan"]', 'value = ["opencl", "cuda"]', "gpu.apis"),
        ('count = 3,', 'count = "3",', "cpu.clusters[1].count"),
        ('vulkan_version = { value = "1.3"', 'vulkan_versio = { value = "1.3"', "gpu.vulkan_versio"),
        ('role = "efficiency"', 'role = "little"', "cpu.clusters[3].role"),
        ('"-sve2"]', '"sve2"]', "cpu.mattr"),
        ('confirmed = false, note = "Qualcomm does not publish which option it chose; 64 KiB assumed"',
         "confirmed = false", "cache.l1d_kib"),
        ('name = "broken"', 'name = "other"', "name"),
    ],
)
def test_other_schema_errors(tmp_path, old, new, key):
    text = GOOD.read_text().replace('name = "snapdragon-8-gen-3"', 'name = "broken"')
    assert old in text
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(LlamaAotError) as e:
        load_soc(str(path))
    assert f"[{key}" in str(e.value) and str(path) in str(e.value)


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(LlamaAotError, match="invalid TOML"):
        load_soc(str(path))


def test_describe_texts():
    table = list_text()
    for name in REQUIRED:
        assert name in table
    assert "Adreno 750 (opencl, vulkan)" in table and "76.8 GB/s" in table
    text = show_text("snapdragon-8-gen-3", weight_bytes_per_token=4.22e9)
    assert "[UNCONFIRMED]" in text and "source: " in text
    assert '"kind": "opencl"' in text and '"kind": "vulkan"' in text
    assert "decode ceiling: 18.2 tokens/s" in text
    assert "decode ceiling" not in show_text("apple-a17-pro")
