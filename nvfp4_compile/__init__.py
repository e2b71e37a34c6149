"""nvfp4_compile: run NVFP4 models on Hopper through torch.compile(model, backend="nvfp4_marlin")."""
from .formats import dequantize_nvfp4, quantize_nvfp4
from . import ops  # noqa: F401  registers torch.ops.nvfp4.*
from .nn import NVFP4Experts, NVFP4Linear, load_nvfp4_checkpoint, quantize_model, save_nvfp4_checkpoint
from .backend import backend_with
from .explain import explain
from .tactic_report import tactic_choices
