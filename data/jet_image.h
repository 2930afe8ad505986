// Jet images in the DeepTop convention (Kasieczka, Plehn, Russell, Schell 2017), the input CNN top
// taggers, and the paper's ResNet-50, see:
//  1. constituents -> (pT, eta, phi) relative to the jet axis (phi wrapped across +-pi);
//  2. centre on the pT-weighted centroid;
//  3. rotate so the principal axis of the pT-weighted distribution is vertical;
//  4. flip so the larger pT sum lies at positive x and positive y (a fixed quadrant);
//  5. pixelate into size x size pixels over [-extent, extent] in both directions, pixel = summed pT;
//  6. normalise to unit total intensity.
// Image column index follows x (eta after the steps), row index follows y (phi); channels are copies.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string>

#include "nn/tensor.h"

namespace toptag {

struct ImageOptions {
  int size = 40;        // pixels per side; 224 reproduces the paper's ResNet-50 input
  int channels = 1;     // 1, or 3 identical copies as the paper fed ResNet-50
  double extent = 0.8;  // half-width of the window in eta and phi
  bool center = true;
  bool rotate = true;
  bool flip = true;
  bool normalize = true;

  int64_t pixels() const { return static_cast<int64_t>(channels) * size * size; }
  std::string describe() const;  // "40x40x1, window +-0.8, centre rotate flip normalise"
};

// The options' keys in a stored configuration (a checkpoint's training configuration, JSON), one
// table read and written by io/config_json.h: f(key, member) for each. O is ImageOptions, const or not.
template <class O, class F>
requires std::same_as<std::remove_const_t<O>, ImageOptions>
void for_each_field(O& o, F&& f) {
  f("image_size", o.size);
  f("channels", o.channels);
  f("extent", o.extent);
  f("center", o.center);
  f("rotate", o.rotate);
  f("flip", o.flip);
  f("normalize", o.normalize);
}

// Throws toptag::Error for a size or channel count toptag cannot use.
void validate(const ImageOptions& options);

// One jet's constituents (n x 4: E, px, py, pz; E <= 0 is padding) -> image (channels x size x size),
// written into `out`, which must hold options.pixels() floats.
void jet_image(std::span<const float> constituents, const ImageOptions& options, std::span<float> out);

// A batch: constituents (count x n x 4) -> tensor (count, channels, size, size). Parallel over jets.
Tensor jet_images(std::span<const float> constituents, int64_t count, int n_constituents, const ImageOptions& options);

}  // namespace toptag
