"""Frontend: Hugging Face Llama 3 checkpoint directory -> ModelSpec + lazy weight reader.

Knows nothing about TVM.
"""

from .checkpoint import Checkpoint, expected_tensors
from .config import load_spec, spec_from_config
from .spec import LayerSpec, ModelSpec, RopeScaling

__all__ = [
    "Checkpoint",
    "LayerSpec",
    "ModelSpec",
    "RopeScaling",
    "expected_tensors",
    "load_spec",
    "spec_from_config",
]
