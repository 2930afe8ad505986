#include "testing.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace toptag::testing {

std::string data_path(const std::string& file) {
  return std::string(TOPTAG_TEST_DATA) + "/" + file;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error thrown)";
}

Golden::Golden(const std::string& file) : path_(data_path(file)), file_(h5_open(path_)) {}

Tensor Golden::get(const std::string& group, const std::string& name) const {
  return h5_read_tensor(file_.get(), group + "/" + name, path_);
}

std::vector<int64_t> Golden::get_int64(const std::string& group, const std::string& name) const {
  return h5_read_int64(file_.get(), group + "/" + name, path_);
}

std::map<std::string, Tensor> Golden::get_all(const std::string& group) const {
  H5Id g = h5_group(file_.get(), group, false);
  std::map<std::string, Tensor> tensors;
  for (const std::string& name : h5_members(g.get())) tensors.emplace(name, get(group, name));
  return tensors;
}

int64_t Golden::attr(const std::string& group, const std::string& name) const {
  H5Id g = h5_group(file_.get(), group, false);
  std::optional<int64_t> v = h5_attr_int(g.get(), name);
  if (!v) throw std::runtime_error(group + " has no attribute " + name);
  return *v;
}

std::string Golden::attr_string(const std::string& group, const std::string& name) const {
  H5Id g = h5_group(file_.get(), group, false);
  std::optional<std::string> v = h5_attr_string(g.get(), name);
  if (!v) throw std::runtime_error(group + " has no string attribute " + name);
  return *v;
}

namespace {

double max_abs(const Tensor& t) {
  double scale = 0.0;
  for (float v : t.span()) scale = std::max(scale, static_cast<double>(std::abs(v)));
  return scale;
}

// Element-wise |actual - expected| <= abs_tol + rtol * |expected|; reports the worst element.
void check_close(const Tensor& actual, const Tensor& expected, const std::string& what, double rtol, double abs_tol) {
  ASSERT_TRUE(actual.defined()) << what << ": no tensor computed";
  ASSERT_EQ(actual.shape().str(), expected.shape().str()) << what << ": shape mismatch";
  int64_t worst = -1, bad = 0;
  double worst_excess = 0.0;
  for (int64_t i = 0; i < expected.numel(); ++i) {
    const double a = actual.data()[i], e = expected.data()[i];
    const double excess = std::abs(a - e) - (abs_tol + rtol * std::abs(e));
    if (!(excess <= 0.0)) {
      ++bad;
      if (worst < 0 || excess > worst_excess || std::isnan(excess)) worst = i, worst_excess = excess;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << expected.numel() << " elements differ; worst at flat index "
                    << worst << ": got " << (worst >= 0 ? actual.data()[worst] : 0.0f) << ", expected "
                    << (worst >= 0 ? expected.data()[worst] : 0.0f) << " (tolerance " << abs_tol << " + " << rtol
                    << " * |expected|)";
}

}  // namespace

void expect_close(const Tensor& actual, const Tensor& expected, const std::string& what, double rtol, double atol) {
  check_close(actual, expected, what, rtol, atol * std::max(1.0, max_abs(expected)));
}

void expect_close_to_max(const Tensor& actual, const Tensor& expected, const std::string& what, double tol) {
  check_close(actual, expected, what, 0.0, tol * max_abs(expected));
}

void expect_same_over_residual(const std::function<Tensor(const Tensor* residual, Output to)>& conv,
                               const Tensor& residual, const std::string& what) {
  const Tensor fresh = conv(&residual, Output::fresh);
  EXPECT_FALSE(fresh.shares_storage_with(residual)) << what;
  const Tensor copy = residual.clone();
  const Tensor over = conv(&copy, Output::over_residual);
  EXPECT_TRUE(over.shares_storage_with(copy)) << what << ": not written over the residual";
  ASSERT_EQ(over.shape(), fresh.shape()) << what;
  int64_t differ = 0;
  for (int64_t i = 0; i < fresh.numel(); ++i)
    differ += std::memcmp(&over.data()[i], &fresh.data()[i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0) << what << ": written over the residual, " << differ << " of " << fresh.numel()
                       << " values differ from a new tensor's";
}

Tensor random_tensor(const Shape& shape, Rng& rng, double scale) {
  Tensor t = Tensor::empty(shape);
  for (float& v : t.span()) v = static_cast<float>(scale * rng.normal());
  return t;
}

Tensor rows_of(const Tensor& t, int64_t begin, int64_t end) {
  Shape shape = t.shape();
  shape[0] = end - begin;
  const int64_t row = t.dim(0) ? t.numel() / t.dim(0) : 0;
  return Tensor::from(shape, std::span<const float>(t.data() + begin * row, static_cast<size_t>((end - begin) * row)));
}

namespace {

double weighted_sum(const Tensor& y, const Tensor& r) {
  double s = 0.0;
  for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y.data()[i]) * r.data()[i];
  return s;
}

}  // namespace

void expect_gradients_match(const VarFunction& f, const std::vector<Tensor>& inputs, const std::string& what,
                            GradCheckOptions options) {
  Rng rng(1234);
  std::vector<Var> vars;
  for (const Tensor& t : inputs) vars.emplace_back(t.clone(), true);
  Var y = f(vars);
  Tensor r = random_tensor(y.shape(), rng);
  backward(y, r);

  auto loss_at = [&](size_t input, int64_t index, double delta) {
    NoGradGuard no_grad;
    std::vector<Var> perturbed;
    for (const Var& v : vars) perturbed.emplace_back(v.value().clone(), false);
    perturbed[input].value().data()[index] += static_cast<float>(delta);
    return weighted_sum(f(perturbed).value(), r);
  };

  for (size_t in = 0; in < vars.size(); ++in) {
    const Tensor& analytic = vars[in].grad();
    ASSERT_TRUE(analytic.defined()) << what << ": input " << in << " received no gradient";
    std::vector<int64_t> coords(static_cast<size_t>(analytic.numel()));
    std::iota(coords.begin(), coords.end(), 0);
    for (size_t i = coords.size(); i > 1; --i) std::swap(coords[i - 1], coords[rng.below(i)]);
    coords.resize(std::min<size_t>(coords.size(), static_cast<size_t>(options.max_coordinates)));

    int checked = 0;
    for (int64_t index : coords) {
      const double a = analytic.data()[index];
      bool matched = false, kink = false;
      double last_numeric = 0.0;
      for (double h : options.steps) {
        const double plus = loss_at(in, index, h), minus = loss_at(in, index, -h), here = loss_at(in, index, 0.0);
        const double numeric = (plus - minus) / (2 * h);
        const double right = (plus - here) / h, left = (here - minus) / h;
        last_numeric = numeric;
        if (std::abs(numeric - a) <= options.atol + options.rtol * std::abs(numeric)) {
          matched = true;
          break;
        }
        kink = kink || std::abs(right - left) > 10 * options.atol + 0.1 * (std::abs(right) + std::abs(left));
      }
      if (!matched && kink) continue;
      ++checked;
      EXPECT_TRUE(matched) << what << ": input " << in << " element " << index << ": analytic " << a << ", numeric "
                           << last_numeric;
    }
    EXPECT_GE(checked * 100, static_cast<int>(coords.size()) * options.min_checked_fraction_percent)
        << what << ": input " << in << ": too many coordinates skipped as kinks";
  }
}

std::vector<Isa> isas_here() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::ref, Isa::avx2, Isa::avx512})
    if (cpu_supports(isa)) out.push_back(isa);
  return out;
}

}  // namespace toptag::testing
