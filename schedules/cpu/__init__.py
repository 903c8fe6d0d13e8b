"""CPU (LLVM) schedule rules."""

from .attention import PagedAttentionCPU, ParallelizeCPUAttention
from .elementwise import Elementwise
from .gemm import DequantGEMM
from .gemv import DequantGEMV
from .params import CPUParams
from .reduction import RowReduction

__all__ = [
    "CPUParams",
    "DequantGEMM",
    "DequantGEMV",
    "Elementwise",
    "PagedAttentionCPU",
    "ParallelizeCPUAttention",
    "RowReduction",
]
