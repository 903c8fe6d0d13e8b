"""What the user asked to build for -> the TVM target, the device API and the activation dtype.

``--target host`` builds for this machine's CPU; ``--target vulkan`` for this machine's CPU as
host and its Vulkan device (or, with ``--vulkan-profile FILE.json``, a Vulkan device described by
the profile ``python -m runtime_stubs.vulkan --profile FILE.json`` wrote on the machine that has
it; targets/vulkan_profiles holds some); ``--soc NAME [--device cpu|gpu|opencl|vulkan|metal]`` for a
phone SoC from the registry (targets/socs), cross-compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime_stubs.errors import LlamaAotError

GPU_APIS = ("opencl", "vulkan", "metal")


@dataclass(frozen=True)
class BuildTarget:
    name: str  # "host", "vulkan" or the SoC name
    host: dict  # llvm target dict for the CPU side
    device_api: str | None  # None: CPU-only library
    device: dict | None  # TVM device target dict (without its host)
    soc: object | None = field(default=None, compare=False)

    def activation_dtype(self, quant: str) -> str:
        """f16 on GPUs (half the bandwidth, native math) unless the weights are f32 (q0f32 asks for
        full precision); f32 on CPUs (x86/arm cores gain nothing from f16 math here)."""
        return "float16" if self.device_api and not quant.endswith("f32") else "float32"

    def tvm_target(self):
        from tvm.target import Target

        if self.device is None:
            return Target(self.host)
        return Target(self.device, host=self.host)

    def describe(self) -> dict:
        return {"name": self.name, "device": self.device_api or "cpu", "tvm_host": self.host, "tvm_device": self.device}


def resolve(
    target: str = "host",
    soc: str | None = None,
    device: str | None = None,
    num_threads: int | None = None,
    vulkan_profile: str | None = None,
) -> BuildTarget:
    from targets.host import host_target_dict

    if device is not None and device not in ("cpu", "gpu", *GPU_APIS):
        raise LlamaAotError(f"unknown --device {device!r}; use cpu, gpu, {', '.join(GPU_APIS)}")
    if vulkan_profile is not None and (soc is not None or target != "vulkan"):
        raise LlamaAotError("--vulkan-profile goes with --target vulkan (a --soc brings its own GPU description)")
    if soc is not None:
        return _resolve_soc(soc, device, num_threads)
    if target == "host":
        if device not in (None, "cpu"):
            raise LlamaAotError("--target host is CPU-only; use --target vulkan for this machine's GPU")
        return BuildTarget("host", host_target_dict(num_threads), None, None)
    if target == "vulkan":
        from targets.backends import vulkan

        vulkan.register()
        if vulkan_profile is not None:
            dev = load_vulkan_profile(vulkan_profile)
        else:
            dev = _this_machines_vulkan_target() or dict(vulkan.lavapipe_target())
        dev.pop("host", None)
        return BuildTarget("vulkan", host_target_dict(num_threads), "vulkan", dev)
    raise LlamaAotError(
        f"unknown target {target!r}; use --target host or --target vulkan, or --soc NAME (see `llama-aot targets`)"
    )


def _resolve_soc(name: str, device: str | None, num_threads: int | None) -> BuildTarget:
    from targets import load_soc

    soc = load_soc(name)
    host = soc.tvm_host_target()
    if num_threads:
        host = {**host, "num-cores": num_threads}
    if device == "cpu" or (device is None and not soc.gpu_apis):
        return BuildTarget(soc.name, host, None, None, soc)
    api = soc.gpu_apis[0] if device in (None, "gpu") else device
    if not soc.gpu_apis:
        raise LlamaAotError(f"{soc.name} has no GPU API in the registry; use --device cpu")
    if api not in soc.gpu_apis:
        raise LlamaAotError(
            f"{soc.name}'s GPU has no {api} ({', '.join(soc.gpu_apis)} available); "
            f"use --device {soc.gpu_apis[0]} or --device cpu"
        )
    dev = dict(soc.tvm_device_target(api))
    dev.pop("host", None)
    if api == "vulkan":
        from targets.backends import vulkan

        vulkan.register()
    return BuildTarget(soc.name, host, api, dev, soc)


def load_vulkan_profile(path: str) -> dict:
    """A Vulkan target dict from a JSON profile (a path, or a name in targets/vulkan_profiles)."""
    import json
    from pathlib import Path

    from targets.backends.vulkan.target import VulkanCaps

    p = Path(path)
    if not p.is_file():
        shipped = Path(__file__).resolve().parent.parent / "targets" / "vulkan_profiles" / f"{path}.json"
        if not shipped.is_file():
            names = sorted(f.stem for f in shipped.parent.glob("*.json"))
            raise LlamaAotError(f"no Vulkan profile {path!r}: give a JSON file or one of {', '.join(names)}")
        p = shipped
    try:
        dev = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise LlamaAotError(f"Vulkan profile {p} is not readable JSON ({e}); write one with "
                            "`python -m runtime_stubs.vulkan --profile FILE.json` on the device") from None
    if not isinstance(dev, dict) or dev.get("kind") != "vulkan":
        raise LlamaAotError(f'Vulkan profile {p} must be a JSON object with "kind": "vulkan"')
    dev = {k: v for k, v in dev.items() if not k.startswith("_")}  # "_source" notes are for people
    dev.pop("host", None)
    VulkanCaps.from_target(dev)  # rejects a malformed vulkan_api_version early
    return dev


def _this_machines_vulkan_target() -> dict | None:
    """The first Vulkan device's real limits, when our runtime plugin can open one."""
    try:
        from runtime_stubs import vulkan as vkrt

        vkrt.load_plugin()
        if vkrt.unavailable_reason():
            return None
        return vkrt.device_target(0)
    except Exception:  # no driver / no compiler for the plugin: fall back to lavapipe's limits
        return None
