#include "quantize/format.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <optional>

#include "nn/check.h"
#include "nn/kernels/bfp.h"

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

// The integer of a fixed-point value before overflow handling: v = x / LSB (exact, the LSB is a power
// of two) rounded by the format's quantization mode. Only the bits below the LSB decide: frac = 0 is
// exact, below (above) a half goes down (up) in every RND mode, and a tie goes where the mode says.
double fixed_rounded(double x, const Format& f) {
  const double v = x / fixed_lsb(f), down = std::floor(v), frac = v - down;
  switch (f.rounding) {
    case Rounding::trn:
      return down;
    case Rounding::trn_zero:
      return std::trunc(v);
    case Rounding::rnd_conv:
      return round_half_even(v);
    default:
      break;
  }
  if (frac != 0.5) return frac < 0.5 ? down : down + 1;
  switch (f.rounding) {
    case Rounding::rnd:  // half toward +inf
      return down + 1;
    case Rounding::rnd_zero:
      return v < 0 ? down + 1 : down;
    case Rounding::rnd_min_inf:
      return down;
    case Rounding::rnd_inf:  // half away from zero
      return v < 0 ? down : down + 1;
    default:
      return down;
  }
}

// The integers (value / LSB) of the W-bit word: two's complement, or unsigned.
struct IntegerRange {
  double lo, hi;
};
IntegerRange word_range(const Format& f) {
  if (!f.is_signed) return {0, std::ldexp(1.0, f.width) - 1};
  return {-std::ldexp(1.0, f.width - 1), std::ldexp(1.0, f.width - 1) - 1};
}
// The integers the format keeps as they are: the word, less its minimum under signed SAT_SYM.
IntegerRange kept_range(const Format& f) {
  IntegerRange r = word_range(f);
  if (f.is_signed && f.overflow == Overflow::sat_sym) r.lo = -r.hi;
  return r;
}

// A rounded integer (or +-inf) after the overflow mode.
double fixed_overflow(double n, const Format& f) {
  const IntegerRange kept = kept_range(f);
  if (n >= kept.lo && n <= kept.hi) return n;
  switch (f.overflow) {
    case Overflow::wrap: {
      const IntegerRange word = word_range(f);
      if (std::isinf(n)) return std::clamp(n, word.lo, word.hi);  // no bits to wrap: saturate
      const double span = std::ldexp(1.0, f.width);
      double low_bits = std::fmod(n, span);  // exact, unlike n - span * floor(n / span) for large n
      if (low_bits < word.lo) low_bits += span;
      if (low_bits > word.hi) low_bits -= span;
      return low_bits;
    }
    case Overflow::sat:
    case Overflow::sat_sym:
      return std::clamp(n, kept.lo, kept.hi);
    case Overflow::sat_zero:
      return 0;
  }
  return 0;
}

// An int8 scale: an empty or non-finite range gets 1, and one below the normal floats (a range of
// ~1e-36 or less) the smallest normal float, so that x / scale is never inf or 0 / 0.
float int8_scale(float wanted) {
  if (!(wanted > 0) || !std::isfinite(wanted)) return 1.0f;
  return std::max(wanted, std::numeric_limits<float>::min());
}

// The one table of mode names each: UG902's, without the AP_ prefix (which parsing also accepts).
constexpr std::pair<Rounding, const char*> kRoundingNames[] = {
    {Rounding::trn, "TRN"},           {Rounding::trn_zero, "TRN_ZERO"},       {Rounding::rnd, "RND"},
    {Rounding::rnd_zero, "RND_ZERO"}, {Rounding::rnd_min_inf, "RND_MIN_INF"}, {Rounding::rnd_inf, "RND_INF"},
    {Rounding::rnd_conv, "RND_CONV"}};
constexpr std::pair<Overflow, const char*> kOverflowNames[] = {
    {Overflow::wrap, "WRAP"}, {Overflow::sat, "SAT"}, {Overflow::sat_zero, "SAT_ZERO"}, {Overflow::sat_sym, "SAT_SYM"}};

template <class Mode, size_t K>
const char* mode_name(const std::pair<Mode, const char*> (&names)[K], Mode mode) {
  for (const auto& [m, name] : names)
    if (m == mode) return name;
  return "?";
}

// A mode as the tables spell it: upper case, without the AP_ prefix.
std::string mode_key(const std::string& arg) {
  std::string key;
  for (char c : arg) key += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (key.starts_with("AP_")) key.erase(0, 3);
  return key;
}

template <class Mode, size_t K>
std::optional<Mode> find_mode(const std::pair<Mode, const char*> (&names)[K], const std::string& arg) {
  for (const auto& [m, name] : names)
    if (mode_key(arg) == name) return m;
  return std::nullopt;
}

template <class Mode, size_t K>
std::string mode_list(const std::pair<Mode, const char*> (&names)[K]) {
  std::string list;
  for (const auto& [m, name] : names) list += (list.empty() ? "AP_" : ", AP_") + std::string(name);
  return list;
}

// fixed / ufixed / ap_fixed / ap_ufixed <W,I[,Q[,O[,N]]]> and ap_int / ap_uint <W>; `args` as written.
Format parse_fixed(const std::string& spec, const std::string& name, const std::vector<std::string>& args) {
  Format f;
  f.kind = FormatKind::fixed;
  f.is_signed = name == "fixed" || name == "ap_fixed" || name == "ap_int";
  const bool integer_type = name == "ap_int" || name == "ap_uint";
  if (integer_type && args.size() != 1) fail("format '{}': {} takes <W>", spec, name);
  if (!integer_type && (args.size() < 2 || args.size() > 5))
    fail("format '{}': {} takes <W,I[,rounding[,overflow[,N]]]>", spec, name);
  f.width = to_int(spec, args[0]);
  f.integer = integer_type ? f.width : to_int(spec, args[1]);
  // The stored integers are int32: a signed word of up to 32 bits, an unsigned one of up to 31.
  const int min_width = f.is_signed ? 2 : 1, max_width = f.is_signed ? 32 : 31;
  if (f.width < min_width || f.width > max_width)
    fail("format '{}': W must be in [{}, {}] for {} formats (W = {})", spec, min_width, max_width,
         f.is_signed ? "signed" : "unsigned", f.width);
  // LSB 2^(I-W) >= 2^-96 and max < 2^64: every value is a normal float.
  if (f.integer < -64 || f.integer > 64) fail("format '{}': I must be in [-64, 64] (I = {})", spec, f.integer);
  if (args.size() >= 3) {
    const std::optional<Rounding> r = find_mode(kRoundingNames, args[2]);
    if (!r)
      fail("format '{}': unknown rounding mode '{}'{} (use {})", spec, args[2],
           find_mode(kOverflowNames, args[2]) ? ", an overflow mode: rounding comes first" : "",
           mode_list(kRoundingNames));
    f.rounding = *r;
  }
  if (args.size() >= 4) {
    const std::optional<Overflow> o = find_mode(kOverflowNames, args[3]);
    if (!o && mode_key(args[3]) == "WRAP_SM")
      fail("format '{}': overflow mode '{}' (sign-magnitude wrap) is not supported (use {})", spec, args[3],
           mode_list(kOverflowNames));
    if (!o) fail("format '{}': unknown overflow mode '{}' (use {})", spec, args[3], mode_list(kOverflowNames));
    f.overflow = *o;
  }
  // N, the saturation bits of UG902's wrap modes, changes AP_WRAP only when N > 0 (the top N bits then
  // saturate) and means nothing to the saturating modes; toptag implements N = 0, the default.
  if (args.size() == 5 && to_int(spec, args[4]) != 0)
    fail("format '{}': N = {} saturation bits are not supported (only N = 0, plain AP_WRAP or a saturating mode)", spec,
         args[4]);
  return f;
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
        "unknown number format '{}' (use fixed<W,I[,ROUNDING[,OVERFLOW]]>, ufixed<...>, ap_fixed<...>, "
        "ap_ufixed<...>, ap_int<W>, ap_uint<W>, bfp<E,M,B>, int8, or a preset: ms-fp8, ms-fp9, msfp12, msfp16, "
        "mxint8)",
        spec_in);
  const std::string name = spec.substr(0, open);
  // The arguments as written (mode names appear in messages as the user spelled them).
  const std::vector<std::string> args = split_arguments(spec_in, spec_in.substr(open + 1, spec.size() - open - 2));
  if (name == "fixed" || name == "ufixed" || name == "ap_fixed" || name == "ap_ufixed" || name == "ap_int" ||
      name == "ap_uint")
    return parse_fixed(spec_in, name, args);
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
      // Unchanged for the formats toptag had before ufixed and the other modes: checkpoints store it.
      return fmt::format("{}<{},{},{},{}>", is_signed ? "fixed" : "ufixed", width, integer,
                         mode_name(kRoundingNames, rounding), mode_name(kOverflowNames, overflow));
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
  return kept_range(f).lo * fixed_lsb(f);
}
double fixed_max(const Format& f) {
  return kept_range(f).hi * fixed_lsb(f);
}

int64_t fixed_integer_ref(double x, const Format& f) {
  if (std::isnan(x)) return 0;
  return static_cast<int64_t>(fixed_overflow(std::isinf(x) ? x : fixed_rounded(x, f), f));
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
  const IntegerRange kept = kept_range(f);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double raw = std::isnan(x[i]) ? 0.0 : (std::isinf(x[i]) ? x[i] : fixed_rounded(x[i], f));
    y[i] = static_cast<float>(fixed_overflow(raw, f) * lsb);
    if (ok) ok[i] = (std::isfinite(x[i]) && raw >= kept.lo && raw <= kept.hi) ? 1.0f : 0.0f;
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
    const int e = bfp_block_exponent(max, bfp_exponent_min(f), bfp_exponent_max(f));
    // In double, as the reference: the step 2^(e+1-M) goes down to 2^-149 (E = 8, M = 23), whose
    // float reciprocal is inf (0 * inf = NaN on an all-zero block). As doubles the step and its
    // reciprocal are exact powers of two, and every result m * step (|m| < 2^M <= 2^23, step >= 2^-149)
    // is exactly a float.
    const double step = power_of_two(e + 1 - f.mantissa_bits), inv = power_of_two(f.mantissa_bits - 1 - e);
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

BlockFormat block_format(const Format& f) {
  if (f.kind != FormatKind::bfp) fail("format {} is not block floating point", f.str());
  return {f.mantissa_bits, f.block, bfp_exponent_min(f), bfp_exponent_max(f)};
}

}  // namespace toptag
