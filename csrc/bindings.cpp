// The one binding file: registers the CUDA kernels as torch.ops.nvfp4_C.* (private ops; the public nvfp4::*
// ops in nvfp4_compile/ops/marlin.py validate, reshape and call them) and makes `nvfp4_compile._C`
// importable as a Python module (importing it runs the registrations below).
#include <Python.h>
#include <torch/library.h>

#include "marlin/marlin.h"
#include "moe/moe.h"

TORCH_LIBRARY(nvfp4_C, m) {
  m.def(
      "marlin_moe(Tensor x, Tensor topk_ids, Tensor topk_weights, Tensor w13_q, Tensor w13_s, Tensor w13_gs, "
      "Tensor w2_q, Tensor w2_s, Tensor w2_gs, int activation, int inter_size, int tile=-1) -> Tensor");
  m.def("marlin_moe_tiles() -> str[]", &nvfp4::marlin_moe_tile_names);
  m.def("moe_align(Tensor topk_ids, int num_experts, int rows) -> (Tensor, Tensor, Tensor)");
  m.def("marlin_repack(Tensor w_fp4, Tensor w_sf) -> (Tensor, Tensor)");
  m.def(
      "marlin_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor global_scale, Tensor? bias, int size_n, "
      "int size_k, int config=-1) -> Tensor");
  m.def("marlin_gemm_configs() -> str[]", &nvfp4::marlin_gemm_config_names);
  m.def("marlin_gemm_fit_clusters_flag() -> int", &nvfp4::marlin_gemm_fit_clusters_flag);
  m.def("marlin_cluster_split_k(bool enable) -> bool", &nvfp4::marlin_cluster_split_k);
  m.def(
      "marlin_dequantize(Tensor qweight, Tensor scales, Tensor global_scale, int size_n, int size_k, "
      "ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(nvfp4_C, CUDA, m) {
  m.impl("marlin_moe", &nvfp4::marlin_moe);
  m.impl("moe_align", &nvfp4::moe_align);
  m.impl("marlin_repack", &nvfp4::marlin_repack);
  m.impl("marlin_gemm", &nvfp4::marlin_gemm);
  m.impl("marlin_dequantize", &nvfp4::marlin_dequantize);
}

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "nvfp4_compile CUDA kernels (torch.ops.nvfp4_C)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
