// udon_fast_native::build_info: how this library was built (compiler, OpenMP, torch), for
// `python -m udon_fast.info` and bug reports.
#include <omp.h>
#include <torch/library.h>

#include <string>

namespace {

std::string build_info() {
  std::string info = "compiler " __VERSION__;
  info += ", OpenMP " + std::to_string(_OPENMP) + " (" + std::to_string(omp_get_max_threads()) + " threads)";
  info += ", built against torch " UDON_TORCH_VERSION;
  return info;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(udon_fast_native, m) {
  m.def("build_info() -> str", &build_info);
}
