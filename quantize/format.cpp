#include "quantize/format.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>

#include "nn/check.h"

namespace toptag {

namespace {

const std::map<std::string, std::tuple<int, int, int>>& bfp_presets() {
  static const std::map<std::string, std::tuple<int, int, int>> presets = {
      {"ms-fp8", {5, 2, 128}}, {"ms-fp9", {5, 3, 128}}, {"msfp12", {8, 3, 16}},
      {"msfp16", {8, 7, 16}},  {"mxint8", {8, 7, 32}},
  };
  return presets;
}

std::vector<std::string> split_arguments(const std::string& spec, const std::string& inside) {
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos <= inside.size()) {
    size_t end = inside.find(',', pos);
    if (end == std::string::npos) end = inside.size();
    std::string p = inside.substr(pos, end - pos);
    p.erase(std::remove_if(p.begin(), p.end(), ::isspace), p.end());
    if (p.empty()) fail("format '{}': empty argument", spec);
    parts.push_back(p);
    pos = end + 1;
  }
  return parts;
}

int to_int(const std::string& spec, const std::string& s) {
  try {
    size_t used = 0;
    const int v = std::stoi(s, &used);
    if (used == s.size()) return v;
  } catch (const std::exception&) {
  }
  fail("format '{}': '{}' is not an integer", spec, s);
}

// Round to nearest, ties to even, without depending on the floating-point environment.
double round_half_even(double v) {
  const double f = std::floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return std::fmod(f, 2.0) == 0.0 ? f : f + 1;
}

// The integer of a fixed-point value before overflow handling.
double fixed_rounded(double x, const Format& f) {
  const double v = x / fixed_lsb(f);
  switch (f.rounding) {
    case Rounding::trn:
      return std::floor(v);
    case Rounding::rnd:
      return std::floor(v + 0.5);
    case Rounding::rnd_conv:
      return round_half_even(v);
  }
  return v;
}

// An int8 scale: an empty or non-finite range gets 1, and one below the normal floats (a range of
// ~1e-36 or less) the smallest normal float, so that x / scale is never inf or 0 / 0.
float int8_scale(float wanted) {
  if (!(wanted > 0) || !std::isfinite(wanted)) return 1.0f;
  return std::max(wanted, std::numeric_limits<float>::min());
}

const char* rounding_name(Rounding r) {
  return r == Rounding::trn ? "TRN" : (r == Rounding::rnd ? "RND" : "RND_CONV");
}

}  // namespace

Format Format::parse(const std::string& spec_in) {
  std::string spec;
  for (char c : spec_in) spec += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  Format f;
  if (auto it = bfp_presets().find(spec); it != bfp_presets().end()) {
    f.kind = FormatKind::bfp;
    std::tie(f.exponent_bits, f.mantissa_bits, f.block) = it->second;
    return f;
  }
  if (spec == "int8") {
    f.kind = FormatKind::int8;
    return f;
  }
  const size_t open = spec.find('<');
  if (open == std::string::npos || spec.back() != '>')
    fail(
        "unknown number format '{}' (use fixed<W,I[,TRN|RND|RND_CONV[,WRAP|SAT]]>, bfp<E,M,B>, int8, or a preset: "
        "ms-fp8, ms-fp9, msfp12, msfp16, mxint8)",
        spec_in);
  const std::string name = spec.substr(0, open);
  const std::vector<std::string> args = split_arguments(spec_in, spec.substr(open + 1, spec.size() - open - 2));
  if (name == "fixed" || name == "ap_fixed") {
    if (args.size() < 2 || args.size() > 4) fail("format '{}': fixed takes <W,I[,rounding[,overflow]]>", spec_in);
    f.kind = FormatKind::fixed;
    f.width = to_int(spec_in, args[0]);
    f.integer = to_int(spec_in, args[1]);
    if (f.width < 2 || f.width > 32) fail("format '{}': W must be in [2, 32]", spec_in);
    if (f.integer < 1 || f.integer > 32) fail("format '{}': I must be in [1, 32]", spec_in);
    if (args.size() >= 3) {
      if (args[2] == "trn")
        f.rounding = Rounding::trn;
      else if (args[2] == "rnd")
        f.rounding = Rounding::rnd;
      else if (args[2] == "rnd_conv")
        f.rounding = Rounding::rnd_conv;
      else
        fail("format '{}': rounding must be TRN, RND or RND_CONV", spec_in);
    }
    if (args.size() == 4) {
      if (args[3] == "wrap")
        f.overflow = Overflow::wrap;
      else if (args[3] == "sat")
        f.overflow = Overflow::sat;
      else
        fail("format '{}': overflow must be WRAP or SAT", spec_in);
    }
    return f;
  }
  if (name == "bfp") {
    if (args.size() != 3) fail("format '{}': bfp takes <E,M,B>", spec_in);
    f.kind = FormatKind::bfp;
    f.exponent_bits = to_int(spec_in, args[0]);
    f.mantissa_bits = to_int(spec_in, args[1]);
    f.block = to_int(spec_in, args[2]);
    if (f.exponent_bits < 2 || f.exponent_bits > 8) fail("format '{}': E must be in [2, 8]", spec_in);
    if (f.mantissa_bits < 1 || f.mantissa_bits > 23) fail("format '{}': M must be in [1, 23]", spec_in);
    if (f.block < 1 || f.block > 4096) fail("format '{}': B must be in [1, 4096]", spec_in);
    return f;
  }
  fail("unknown number format '{}'", spec_in);
}

std::string Format::str() const {
  switch (kind) {
    case FormatKind::fixed:
      return fmt::format("fixed<{},{},{},{}>", width, integer, rounding_name(rounding),
                         overflow == Overflow::wrap ? "WRAP" : "SAT");
    case FormatKind::bfp:
      for (const auto& [name, p] : bfp_presets())
        if (p == std::make_tuple(exponent_bits, mantissa_bits, block)) return name;
      return fmt::format("bfp<{},{},{}>", exponent_bits, mantissa_bits, block);
    case FormatKind::int8:
      return "int8";
  }
  return "?";
}

// ---- fixed point ------------------------------------------------------------------------------

double fixed_lsb(const Format& f) {
  return std::ldexp(1.0, f.integer - f.width);
}
double fixed_min(const Format& f) {
  return -std::ldexp(1.0, f.integer - 1);
}
double fixed_max(const Format& f) {
  return std::ldexp(1.0, f.integer - 1) - fixed_lsb(f);
}

int64_t fixed_integer_ref(double x, const Format& f) {
  const double lo = -std::ldexp(1.0, f.width - 1), hi = std::ldexp(1.0, f.width - 1) - 1;
  if (std::isnan(x)) return 0;
  if (std::isinf(x)) return static_cast<int64_t>(x > 0 ? hi : lo);  // no bits to wrap: saturate
  double n = fixed_rounded(x, f);
  if (f.overflow == Overflow::sat) {
    n = std::clamp(n, lo, hi);
  } else {  // two's complement: keep the low W bits
    const double span = std::ldexp(1.0, f.width);
    n -= span * std::floor((n - lo) / span);
  }
  return static_cast<int64_t>(n);
}

double fixed_ref(double x, const Format& f) {
  return static_cast<double>(fixed_integer_ref(x, f)) * fixed_lsb(f);
}

// ---- block floating point -----------------------------------------------------------------------

int bfp_exponent_max(const Format& f) {
  return (1 << (f.exponent_bits - 1)) - 1;
}
int bfp_exponent_min(const Format& f) {
  return -bfp_exponent_max(f);
}
double bfp_max_magnitude(const Format& f) {
  return (std::ldexp(1.0, f.mantissa_bits) - 1) * std::ldexp(1.0, bfp_exponent_max(f) + 1 - f.mantissa_bits);
}

int bfp_block_ref(std::span<const double> x, const Format& f, std::span<int64_t> m) {
  double max = 0;
  for (double v : x) max = std::max(max, std::fabs(v));
  int e = bfp_exponent_min(f);
  if (max > 0) {
    int exp2 = 0;
    std::frexp(max, &exp2);  // max = frac * 2^exp2, frac in [0.5, 1): floor(log2(max)) = exp2 - 1
    e = std::clamp(exp2 - 1, bfp_exponent_min(f), bfp_exponent_max(f));
  }
  const double scale = std::ldexp(1.0, e + 1 - f.mantissa_bits), top = std::ldexp(1.0, f.mantissa_bits) - 1;
  for (size_t i = 0; i < x.size(); ++i) {
    const double mag = std::min(round_half_even(std::fabs(x[i]) / scale), top);
    m[i] = static_cast<int64_t>(x[i] < 0 ? -mag : mag);
  }
  return e;
}

// ---- tensors ------------------------------------------------------------------------------------

AxisLayout weight_layout(const Shape& w) {
  if (w.rank() == 4) return {w[0], w[1], w[2] * w[3]};
  if (w.rank() == 2) return {w[0], w[1], 1};
  fail("quantize: weights must be (K,C,R,S) or (O,I), found shape {}", w.str());
}

AxisLayout activation_layout(const Shape& x) {
  if (x.rank() == 4) return {x[0], x[1], x[2] * x[3]};
  if (x.rank() == 2) return {x[0], x[1], 1};
  fail("quantize: activations must be (N,C,H,W) or (N,I), found shape {}", x.str());
}

float AffineRange::scale() const {
  const double lo = std::min<double>(min, 0), hi = std::max<double>(max, 0);
  return hi > lo ? int8_scale(static_cast<float>((hi - lo) / 255.0)) : 1.0f;
}

int AffineRange::zero_point() const {
  const double lo = std::min<double>(min, 0);
  return std::clamp(static_cast<int>(round_half_even(-lo / scale())), 0, 255);
}

namespace {

void quantize_fixed(const Format& f, const float* x, float* y, float* ok, int64_t n) {
  const double lsb = fixed_lsb(f);
  const double lo = -std::ldexp(1.0, f.width - 1), hi = std::ldexp(1.0, f.width - 1) - 1;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double raw = std::isfinite(x[i]) ? fixed_rounded(x[i], f) : 0.0;
    y[i] = static_cast<float>(fixed_integer_ref(x[i], f) * lsb);
    if (ok) ok[i] = (std::isfinite(x[i]) && raw >= lo && raw <= hi) ? 1.0f : 0.0f;
  }
}

// Calls fn(o, block_begin, block_end, i) for every block of the layout.
template <class Fn>
void for_each_block(const AxisLayout& l, int block, Fn fn) {
  const int64_t blocks = (l.axis + block - 1) / block;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t o = 0; o < l.outer; ++o)
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t i = 0; i < l.inner; ++i) fn(o, b, b * block, std::min<int64_t>(l.axis, (b + 1) * block), i);
}

void quantize_bfp(const Format& f, const AxisLayout& l, const float* x, float* y, float* ok, int8_t* exponents,
                  int32_t* mantissas) {
  const double top = std::ldexp(1.0, f.mantissa_bits) - 1;
  const double limit = bfp_max_magnitude(f);
  const int64_t blocks = (l.axis + f.block - 1) / f.block;
  for_each_block(l, f.block, [&](int64_t o, int64_t b, int64_t a0, int64_t a1, int64_t i) {
    auto at = [&](int64_t a) { return (o * l.axis + a) * l.inner + i; };
    float max = 0;
    for (int64_t a = a0; a < a1; ++a) max = std::max(max, std::fabs(x[at(a)]));
    int e = bfp_exponent_min(f);
    if (max > 0 && std::isfinite(max)) {
      int exp2 = 0;
      std::frexp(max, &exp2);
      e = std::clamp(exp2 - 1, bfp_exponent_min(f), bfp_exponent_max(f));
    } else if (!std::isfinite(max)) {
      e = bfp_exponent_max(f);
    }
    // In double, as the reference: the step 2^(e+1-M) goes down to 2^-149 (E = 8, M = 23), whose
    // float reciprocal is inf (0 * inf = NaN on an all-zero block). As doubles the step and its
    // reciprocal are exact powers of two, and every result m * step (|m| < 2^M <= 2^23, step >= 2^-149)
    // is exactly a float.
    const double step = std::ldexp(1.0, e + 1 - f.mantissa_bits), inv = std::ldexp(1.0, f.mantissa_bits - 1 - e);
    if (exponents) exponents[(o * blocks + b) * l.inner + i] = static_cast<int8_t>(e);
    for (int64_t a = a0; a < a1; ++a) {
      const float v = x[at(a)];
      const double mag = std::isnan(v) ? 0.0 : std::min(round_half_even(std::fabs(v) * inv), top);
      y[at(a)] = static_cast<float>(std::copysign(mag * step, v));
      if (mantissas) mantissas[at(a)] = static_cast<int32_t>(v < 0 ? -mag : mag);
      if (ok) ok[at(a)] = std::fabs(v) <= limit ? 1.0f : 0.0f;
    }
  });
}

void quantize_int8_weight(const AxisLayout& l, const float* x, float* y, float* ok, float* scales, int32_t* q) {
  const int64_t per = l.axis * l.inner;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < l.outer; ++o) {
    float amax = 0;
    for (int64_t k = 0; k < per; ++k)
      if (std::isfinite(x[o * per + k])) amax = std::max(amax, std::fabs(x[o * per + k]));  // inf saturates
    const float scale = int8_scale(amax / 127.0f);
    if (scales) scales[o] = scale;
    for (int64_t k = 0; k < per; ++k) {
      const float w = x[o * per + k];
      const float v =
          std::isnan(w) ? 0.0f : std::clamp(static_cast<float>(round_half_even(w / scale)), -127.0f, 127.0f);
      y[o * per + k] = v * scale;
      if (q) q[o * per + k] = static_cast<int32_t>(v);
      if (ok) ok[o * per + k] = 1.0f;
    }
  }
}

void quantize_int8_activation(const AffineRange& r, const float* x, float* y, float* ok, int64_t n) {
  const float scale = r.scale();
  const int zp = r.zero_point();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float raw = static_cast<float>(round_half_even(x[i] / scale)) + static_cast<float>(zp);
    const float q = std::clamp(raw, 0.0f, 255.0f);
    y[i] = (q - static_cast<float>(zp)) * scale;
    if (ok) ok[i] = raw >= 0.0f && raw <= 255.0f ? 1.0f : 0.0f;
  }
}

}  // namespace

void quantize_tensor(const Format& f, bool is_weight, const Tensor& x, Tensor& y, Tensor* in_range,
                     const AffineRange* range) {
  float* ok = in_range ? in_range->data() : nullptr;
  switch (f.kind) {
    case FormatKind::fixed:
      quantize_fixed(f, x.data(), y.data(), ok, x.numel());
      break;
    case FormatKind::bfp:
      quantize_bfp(f, is_weight ? weight_layout(x.shape()) : activation_layout(x.shape()), x.data(), y.data(), ok,
                   nullptr, nullptr);
      break;
    case FormatKind::int8:
      if (is_weight) {
        quantize_int8_weight(weight_layout(x.shape()), x.data(), y.data(), ok, nullptr, nullptr);
      } else {
        if (!range) fail("int8 activations need calibrated ranges (run toptag quantize with --calibration)");
        quantize_int8_activation(*range, x.data(), y.data(), ok, x.numel());
      }
      break;
  }
  // A NaN stays NaN, as through every other op: the encodings have no NaN (the stored integers hold 0),
  // but a quantized value of 0 would hide an overflow upstream from the non-finite checks. inf saturates,
  // as the formats define.
  const float* in = x.data();
  float* out = y.data();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(in[i])) out[i] = in[i];
}

EncodedTensor encode_weight(const Format& f, const Tensor& w) {
  EncodedTensor e;
  Tensor y = Tensor::empty(w.shape());
  e.integers.resize(static_cast<size_t>(w.numel()));
  const AxisLayout l = weight_layout(w.shape());
  switch (f.kind) {
    case FormatKind::fixed:
      for (int64_t i = 0; i < w.numel(); ++i) e.integers[i] = static_cast<int32_t>(fixed_integer_ref(w.data()[i], f));
      break;
    case FormatKind::bfp:
      e.exponents.resize(static_cast<size_t>(l.outer * ((l.axis + f.block - 1) / f.block) * l.inner));
      quantize_bfp(f, l, w.data(), y.data(), nullptr, e.exponents.data(), e.integers.data());
      break;
    case FormatKind::int8:
      e.scales.resize(static_cast<size_t>(l.outer));
      quantize_int8_weight(l, w.data(), y.data(), nullptr, e.scales.data(), e.integers.data());
      break;
  }
  return e;
}

Tensor decode_weight(const Format& f, const EncodedTensor& e, const Shape& shape) {
  Tensor w = Tensor::empty(shape);
  const AxisLayout l = weight_layout(shape);
  if (static_cast<int64_t>(e.integers.size()) != w.numel())
    fail("decode: {} integers for shape {}", e.integers.size(), shape.str());
  switch (f.kind) {
    case FormatKind::fixed:
      for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = static_cast<float>(e.integers[i] * fixed_lsb(f));
      break;
    case FormatKind::bfp: {
      const int64_t blocks = (l.axis + f.block - 1) / f.block;
      for (int64_t o = 0; o < l.outer; ++o)
        for (int64_t a = 0; a < l.axis; ++a)
          for (int64_t i = 0; i < l.inner; ++i) {
            const int exp = e.exponents[(o * blocks + a / f.block) * l.inner + i];
            const int64_t k = (o * l.axis + a) * l.inner + i;
            w.data()[k] = std::ldexp(static_cast<float>(e.integers[k]), exp + 1 - f.mantissa_bits);
          }
      break;
    }
    case FormatKind::int8: {
      const int64_t per = l.axis * l.inner;
      for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = static_cast<float>(e.integers[i]) * e.scales[i / per];
      break;
    }
  }
  return w;
}

}  // namespace toptag
