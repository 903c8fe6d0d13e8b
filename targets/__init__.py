"""Per-SoC target descriptions: the SoC registry (``targets/socs/*.toml``) and the TVM targets
derived from it. See docs/socs.md."""

from .registry import SocSpec, list_socs, load_soc

__all__ = ["SocSpec", "list_socs", "load_soc"]
