#include "data/jet_image.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "data/jets.h"
#include "nn/check.h"

namespace toptag {

std::string ImageOptions::describe() const {
  std::string steps;
  if (center) steps += " centre";
  if (rotate) steps += " rotate";
  if (flip) steps += " flip";
  if (normalize) steps += " normalise";
  return fmt::format("{}x{}x{}, window +-{:g},{}", size, size, channels, extent, steps.empty() ? " raw" : steps);
}

void validate(const ImageOptions& o) {
  if (o.size < 4 || o.size > 1024) fail("image size {} is out of range [4, 1024]", o.size);
  if (o.channels < 1 || o.channels > 4) fail("image channels {} is out of range [1, 4]", o.channels);
  if (!(o.extent > 0) || o.extent > 3.2) fail("image extent {} is out of range (0, 3.2]", o.extent);
}

namespace {

struct Hit {
  double x, y, pt;
};

// Step 1: constituents relative to the jet axis. Padding (E <= 0) and pT = 0 entries are skipped.
std::vector<Hit> relative_hits(std::span<const float> c) {
  const JetKinematics jet = jet_kinematics(c);
  std::vector<Hit> hits;
  hits.reserve(c.size() / 4);
  for (size_t i = 0; i + 3 < c.size(); i += 4) {
    if (c[i] <= 0) continue;
    const double pt = four_pt(c[i + 1], c[i + 2]);
    if (pt <= 0) continue;
    hits.push_back(
        {four_eta(c[i + 1], c[i + 2], c[i + 3]) - jet.eta, delta_phi(four_phi(c[i + 1], c[i + 2]), jet.phi), pt});
  }
  return hits;
}

void center_on_centroid(std::vector<Hit>& hits) {
  double sx = 0, sy = 0, sw = 0;
  for (const Hit& h : hits) sx += h.pt * h.x, sy += h.pt * h.y, sw += h.pt;
  if (sw <= 0) return;
  for (Hit& h : hits) h.x -= sx / sw, h.y -= sy / sw;
}

// Rotates about the origin so that the principal axis of the pT-weighted distribution is the y axis.
void rotate_principal_axis_vertical(std::vector<Hit>& hits) {
  double sxx = 0, syy = 0, sxy = 0;
  for (const Hit& h : hits) sxx += h.pt * h.x * h.x, syy += h.pt * h.y * h.y, sxy += h.pt * h.x * h.y;
  if (sxx == 0 && syy == 0) return;
  const double axis = 0.5 * std::atan2(2 * sxy, sxx - syy);  // angle of the major axis from x
  const double turn = std::numbers::pi / 2 - axis;
  const double c = std::cos(turn), s = std::sin(turn);
  for (Hit& h : hits) {
    const double x = h.x * c - h.y * s, y = h.x * s + h.y * c;
    h.x = x, h.y = y;
  }
}

void flip_to_positive_quadrant(std::vector<Hit>& hits) {
  double x_balance = 0, y_balance = 0;
  for (const Hit& h : hits)
    x_balance += h.x > 0 ? h.pt : (h.x < 0 ? -h.pt : 0), y_balance += h.y > 0 ? h.pt : (h.y < 0 ? -h.pt : 0);
  for (Hit& h : hits) {
    if (x_balance < 0) h.x = -h.x;
    if (y_balance < 0) h.y = -h.y;
  }
}

}  // namespace

void jet_image(std::span<const float> constituents, const ImageOptions& o, std::span<float> out) {
  TT_ASSERT(static_cast<int64_t>(out.size()) == o.pixels());
  const int64_t plane = static_cast<int64_t>(o.size) * o.size;
  std::fill(out.begin(), out.begin() + plane, 0.0f);
  std::vector<Hit> hits = relative_hits(constituents);
  if (o.center) center_on_centroid(hits);
  if (o.rotate) rotate_principal_axis_vertical(hits);
  if (o.flip) flip_to_positive_quadrant(hits);

  const double scale = o.size / (2 * o.extent);
  double total = 0;
  for (const Hit& h : hits) {
    const double col = std::floor((h.x + o.extent) * scale), row = std::floor((h.y + o.extent) * scale);
    if (col < 0 || row < 0 || col >= o.size || row >= o.size) continue;
    out[static_cast<int64_t>(row) * o.size + static_cast<int64_t>(col)] += static_cast<float>(h.pt);
    total += h.pt;
  }
  if (o.normalize && total > 0) {
    const float inv = static_cast<float>(1.0 / total);
    for (int64_t i = 0; i < plane; ++i) out[i] *= inv;
  }
  for (int c = 1; c < o.channels; ++c) std::copy_n(out.begin(), plane, out.begin() + c * plane);
}

Tensor jet_images(std::span<const float> constituents, int64_t count, int n_constituents, const ImageOptions& o) {
  validate(o);
  if (static_cast<int64_t>(constituents.size()) != count * n_constituents * 4)
    fail("jet_images: {} values for {} jets of {} constituents", constituents.size(), count, n_constituents);
  Tensor images = Tensor::empty({count, o.channels, o.size, o.size});
  const int64_t per_jet = static_cast<int64_t>(n_constituents) * 4;
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t j = 0; j < count; ++j)
    jet_image(constituents.subspan(j * per_jet, per_jet), o,
              std::span<float>(images.data() + j * o.pixels(), static_cast<size_t>(o.pixels())));
  return images;
}

}  // namespace toptag
