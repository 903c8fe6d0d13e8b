"""CPU (LLVM) schedule rules."""

from .elementwise import Elementwise
from .gemm import DequantGEMM
from .gemv import DequantGEMV
from .params import CPUParams
from .reduction import RowReduction

__all__ = ["CPUParams", "DequantGEMM", "DequantGEMV", "Elementwise", "RowReduction"]
