#include "nn/parallel.h"

#include <omp.h>

#include <thread>

#include "nn/blas.h"

namespace toptag {

namespace {
int configured_threads = 0;
}

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void set_num_threads(int n) {
  if (n <= 0) n = hardware_threads();
  configured_threads = n;
  omp_set_num_threads(n);
  set_blas_threads(n);
}

int num_threads() {
  return configured_threads > 0 ? configured_threads : omp_get_max_threads();
}

}  // namespace toptag
