// Shared test helpers: the golden-file reader and comparison, and the generic gradient checker.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/h5.h"
#include "nn/autograd.h"
#include "nn/check.h"
#include "nn/kernels/isa.h"
#include "nn/kernels/packed_conv.h"
#include "nn/random.h"

namespace toptag::testing {

std::string data_path(const std::string& file);  // tests/data/<file>

// The message of the toptag::Error that f throws, or "(no error thrown)".
std::string error_of(const std::function<void()>& f);

// A PyTorch reference file in tests/data (by default torch_ops_golden.h5, one group per case).
class Golden {
 public:
  explicit Golden(const std::string& file = "torch_ops_golden.h5");
  Tensor get(const std::string& group, const std::string& name) const;  // float64 -> float32
  std::vector<int64_t> get_int64(const std::string& group, const std::string& name) const;
  // Every dataset directly in `group`, by name.
  std::map<std::string, Tensor> get_all(const std::string& group) const;
  int64_t attr(const std::string& group, const std::string& name) const;
  std::string attr_string(const std::string& group, const std::string& name) const;

 private:
  std::string path_;
  H5Id file_;
};

// Element-wise |actual - expected| <= atol + rtol * |expected|, with atol scaled by the largest
// |expected| so that both large and small tensors are judged fairly. Reports the worst element.
void expect_close(const Tensor& actual, const Tensor& expected, const std::string& what, double rtol = 1e-4,
                  double atol = 1e-5);

// Element-wise |actual - expected| <= tol * max|expected|: the error judged against the tensor's largest
// entry, for tensors (gradients) whose small entries are sums that cancel down to rounding noise.
void expect_close_to_max(const Tensor& actual, const Tensor& expected, const std::string& what, double tol);

Tensor random_tensor(const Shape& shape, Rng& rng, double scale = 1.0);

// A convolution with a residual, conv(residual, to), run into a new tensor and over a copy of
// `residual` (Output::over_residual): the second must be written in the copy's buffer, with the same
// bits as the first.
void expect_same_over_residual(const std::function<Tensor(const Tensor* residual, Output to)>& conv,
                               const Tensor& residual, const std::string& what);

// A copy of rows [begin, end) of t's first dimension.
Tensor rows_of(const Tensor& t, int64_t begin, int64_t end);

// The instruction-set paths of the inference kernels this CPU runs (ref everywhere).
std::vector<Isa> isas_here();

// Finite-difference gradient check of f at `inputs` for L = sum(f(inputs) * r), r fixed random.
// The analytical gradient of every input must match central differences for at least one of the
// step sizes; coordinates where the one-sided slopes disagree (a kink of relu or max) are skipped.
struct GradCheckOptions {
  std::vector<double> steps = {1e-2, 3e-3, 1e-3};
  double rtol = 2e-2;
  double atol = 2e-3;
  int max_coordinates = 48;               // per input, chosen at random when an input is larger
  int min_checked_fraction_percent = 50;  // fail if kinks hide more than half the coordinates
};
using VarFunction = std::function<Var(std::vector<Var>&)>;
void expect_gradients_match(const VarFunction& f, const std::vector<Tensor>& inputs, const std::string& what,
                            GradCheckOptions options = {});

}  // namespace toptag::testing
