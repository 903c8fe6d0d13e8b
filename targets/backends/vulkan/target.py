"""What a ``{"kind": "vulkan", ...}`` target allows, read into one immutable record.

The attribute names are those of the wheel's "vulkan" target kind (``Target({"kind": "vulkan",
"zzz": 1})`` lists them).  Defaults follow TVM's own SPIR-V back end (``SPIRVSupport``), except the
Vulkan API version: TVM assumes 1.0, we assume 1.1 because 8/16-bit storage and subgroups are core
there and every driver we target (desktop, Android, lavapipe) has it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import VulkanCodegenError

# VkSubgroupFeatureFlagBits
SUBGROUP_BASIC = 0x1
SUBGROUP_VOTE = 0x2
SUBGROUP_ARITHMETIC = 0x4
SUBGROUP_BALLOT = 0x8
SUBGROUP_SHUFFLE = 0x10
SUBGROUP_SHUFFLE_RELATIVE = 0x20

#: Push constants TVM's Vulkan runtime uses for scalar arguments (8 bytes each); above this the
#: scalars go to a uniform buffer (kMaxPushConstantsBytes in TVM, fixed, not the device limit).
MAX_PUSH_CONSTANT_BYTES = 128


def vk_api_version(major: int, minor: int, patch: int = 0) -> int:
    """VK_MAKE_API_VERSION(0, major, minor, patch), the encoding of ``vulkan_api_version``."""
    return (major << 22) | (minor << 12) | patch


def _api_major_minor(version: int) -> tuple[int, int]:
    return (version >> 22) & 0x7F, (version >> 12) & 0x3FF


#: SPIR-V version glslangValidator emits for each --target-env.
_SPIRV_FOR_ENV = {"vulkan1.0": 0x10000, "vulkan1.1": 0x10300, "vulkan1.2": 0x10500, "vulkan1.3": 0x10600}


@dataclass(frozen=True)
class VulkanCaps:
    """Limits and features of the device a "vulkan" target describes."""

    max_num_threads: int = 256
    max_block_size: tuple[int | None, int | None, int | None] = (None, None, None)
    max_shared_memory_per_block: int = 16384
    thread_warp_size: int = 1
    supports_float16: bool = False
    supports_float64: bool = False
    supports_int8: bool = False
    supports_int16: bool = False
    supports_int64: bool = False
    supports_8bit_buffer: bool = False
    supports_16bit_buffer: bool = False
    supported_subgroup_operations: int | None = None
    vulkan_api_version: int = vk_api_version(1, 1)
    max_spirv_version: int | None = None

    @classmethod
    def from_target(cls, target) -> VulkanCaps:
        """Read the attributes of a ``tvm.target.Target`` of kind "vulkan" (or a plain dict)."""
        if isinstance(target, dict):
            attrs = dict(target)
            kind = attrs.get("kind")
        else:
            attrs = dict(target.attrs)
            kind = target.kind.name
        if kind != "vulkan":
            raise VulkanCodegenError(f"expected a target of kind 'vulkan', got {kind!r}")

        def get(key, default):
            v = attrs.get(key)
            return default if v is None else v

        api = int(get("vulkan_api_version", vk_api_version(1, 1)))
        if api < vk_api_version(1, 0):  # someone wrote 11 or 13 instead of the encoded form
            raise VulkanCodegenError(
                f"vulkan_api_version={api} is not an encoded Vulkan version; use "
                "targets.backends.vulkan.vk_api_version(1, 3) (= VK_MAKE_API_VERSION)"
            )
        sso = attrs.get("supported_subgroup_operations")
        return cls(
            max_num_threads=int(get("max_num_threads", get("max_threads_per_block", 256))),
            max_block_size=tuple(
                (int(attrs[k]) if attrs.get(k) is not None else None)
                for k in ("max_block_size_x", "max_block_size_y", "max_block_size_z")
            ),
            max_shared_memory_per_block=int(get("max_shared_memory_per_block", 16384)),
            thread_warp_size=int(get("thread_warp_size", 1)),
            supports_float16=bool(get("supports_float16", False)),
            supports_float64=bool(get("supports_float64", False)),
            supports_int8=bool(get("supports_int8", False)),
            supports_int16=bool(get("supports_int16", False)),
            supports_int64=bool(get("supports_int64", False)),
            supports_8bit_buffer=bool(get("supports_8bit_buffer", False)),
            supports_16bit_buffer=bool(get("supports_16bit_buffer", False)),
            supported_subgroup_operations=None if sso is None else int(sso),
            vulkan_api_version=api,
            max_spirv_version=None if attrs.get("max_spirv_version") is None else int(attrs["max_spirv_version"]),
        )

    @property
    def target_env(self) -> str:
        """The ``--target-env`` of glslangValidator and spirv-val for this target."""
        major, minor = _api_major_minor(self.vulkan_api_version)
        if major != 1:
            raise VulkanCodegenError(f"unsupported Vulkan API version {major}.{minor}")
        env = f"vulkan1.{min(minor, 3)}"
        # A device may report a newer API but a smaller SPIR-V version (max_spirv_version).
        if self.max_spirv_version is not None:
            while _SPIRV_FOR_ENV[env] > self.max_spirv_version and env != "vulkan1.0":
                env = f"vulkan1.{int(env[-1]) - 1}"
        return env

    @property
    def has_subgroups(self) -> bool:
        """Subgroup built-ins (GL_KHR_shader_subgroup_basic) need Vulkan 1.1."""
        return self.target_env != "vulkan1.0"

    def subgroup_ops_allowed(self, bit: int) -> bool:
        if not self.has_subgroups:
            return False
        if bit == SUBGROUP_BASIC:
            return True  # guaranteed for the compute stage by Vulkan 1.1
        return self.supported_subgroup_operations is not None and bool(self.supported_subgroup_operations & bit)


def lavapipe_target(host: dict | None = None, thread_warp_size: int = 8) -> dict:
    """Target dict for Mesa's lavapipe (llvmpipe CPU driver, 22.x): what ``vulkaninfo`` reports.

    ``thread_warp_size`` must not exceed the device's subgroup size (8 on a 256-bit AVX2 host) --
    TVM's reductions emit warp-synchronous code for that many lanes.  Pass 1 to get plain
    shared-memory reductions.
    """
    t = {
        "kind": "vulkan",
        "max_num_threads": 256,
        "max_threads_per_block": 256,
        "thread_warp_size": thread_warp_size,
        "max_shared_memory_per_block": 32768,
        "supports_float16": True,
        "supports_int8": True,
        "supports_int16": True,
        "supports_int64": True,
        "supports_float64": True,
        "supports_8bit_buffer": True,
        "supports_16bit_buffer": True,
        "supports_storage_buffer_storage_class": True,
        "supported_subgroup_operations": SUBGROUP_BASIC
        | SUBGROUP_VOTE
        | SUBGROUP_ARITHMETIC
        | SUBGROUP_BALLOT
        | SUBGROUP_SHUFFLE,
        "max_push_constants_size": 128,
        "vulkan_api_version": vk_api_version(1, 3),
        "max_spirv_version": 0x10600,
    }
    if host is not None:
        t["host"] = host
    return t
