// libFuzzer target: the quantization format parser (toptag quantize -f SPEC), then the parsed format
// applied to a small tensor: every spec is a format or a clear error, and every format quantizes,
// encodes and decodes without crashing.
#include <string>

#include "nn/check.h"
#include "quantize/format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace toptag;
  const std::string spec(reinterpret_cast<const char*>(data), size);
  Format f;
  try {
    f = Format::parse(spec);
  } catch (const Error&) {
    return 0;
  }
  if (Format::parse(f.str()).str() != f.str()) __builtin_trap();  // the canonical spec round-trips
  Tensor w = Tensor::empty({4, 3, 3, 3});
  for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = static_cast<float>((i * 37 % 101) - 50) * 0.013f;
  Tensor y = Tensor::empty(w.shape());
  try {
    quantize_tensor(f, true, w, y, nullptr);
    if (f.kind == FormatKind::fixed)  // every mode keeps the result in the format's range
      for (float v : y.span())
        if (!(v >= static_cast<float>(fixed_min(f)) && v <= static_cast<float>(fixed_max(f)))) __builtin_trap();
    decode_weight(f, encode_weight(f, w), w.shape());
  } catch (const Error&) {  // a format may refuse a layout; it must say so, not crash
  }
  return 0;
}
