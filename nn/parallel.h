// One thread setting for everything: OpenBLAS (built on OpenMP, Debian's libopenblas-openmp) and our
// own OpenMP loops share one pool of `threads` workers. OpenBLAS called from inside one of our
// parallel regions runs single-threaded, so the two never oversubscribe the cores.
#pragma once

namespace toptag {

// n <= 0 means all cores. Applies to the calling process.
void set_num_threads(int n);
int num_threads();
int hardware_threads();

}  // namespace toptag
