"""A host package records the instruction sets its library uses; a CPU without one of them gets a one-line
error before the library is loaded (not SIGILL)."""

from __future__ import annotations

import pytest

from runtime_stubs import cpu_features
from runtime_stubs.engine import Engine
from runtime_stubs.errors import LlamaAotError
from runtime_stubs.package_format import read_package_config


def _cpuinfo(tmp_path, flags):
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: " + " ".join(sorted(flags)) + "\n\n")
    return p


def test_host_package_records_what_this_cpu_has(compiled):
    pkg = compiled("tied_llama3rope", "q4f16")
    required = read_package_config(pkg)["target"]["cpu_features"]
    host = cpu_features.host_cpu_flags()
    assert required and "avx2" in required and set(required) <= host  # built for this CPU: all present


def test_a_cpu_without_them_is_refused_before_loading(compiled, tmp_path, monkeypatch):
    pkg = compiled("tied_llama3rope", "q4f16")
    config = read_package_config(pkg)
    required = set(config["target"]["cpu_features"])
    cpu_features.check_host_cpu(pkg, config, _cpuinfo(tmp_path, required | {"sse2"}))  # all there: fine
    lacking = required - {"avx2"}
    with pytest.raises(LlamaAotError, match=r"compiled for a CPU with avx2 .*this CPU lacks: compile it on this machine"):
        cpu_features.check_host_cpu(pkg, config, _cpuinfo(tmp_path, lacking))
    real = cpu_features.host_cpu_flags
    monkeypatch.setattr(cpu_features, "host_cpu_flags", lambda cpuinfo=None: real() - {"avx2"})
    with pytest.raises(LlamaAotError, match="avx2"):
        Engine(pkg)


def test_llvm_names_map_to_linux_flags():
    assert cpu_features.required_cpu_features({"avx512vnni", "avxvnni", "avx2", "amx-tile", "neon"}) == [
        "avx2", "avx512_vnni", "avx_vnni"]


@pytest.mark.parametrize("version", [2, None, "1"])
def test_a_package_of_another_format_is_refused(compiled, tmp_path, version):
    import json
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(compiled("tied_llama3rope", "q4f16"), pkg)
    cfg = json.loads((pkg / "llama-aot.json").read_text())
    cfg["format_version"] = version
    (pkg / "llama-aot.json").write_text(json.dumps(cfg))
    with pytest.raises(LlamaAotError, match="recompile the package with this llama-aot") as e:
        read_package_config(pkg)
    assert "\n" not in str(e.value)
