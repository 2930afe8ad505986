#include "data/jets.h"

#include <cmath>
#include <numbers>

namespace toptag {

void JetBatch::resize(int64_t count, int n) {
  n_constituents = n;
  constituents.assign(static_cast<size_t>(count) * n * 4, 0.0f);
  truth.assign(static_cast<size_t>(count) * 4, 0.0f);
  labels.assign(static_cast<size_t>(count), 0);
  ttv.assign(static_cast<size_t>(count), 0);
  rows.assign(static_cast<size_t>(count), 0);
}

double four_pt(double px, double py) {
  return std::hypot(px, py);
}

double four_eta(double px, double py, double pz) {
  const double pt = four_pt(px, py);
  if (pt == 0.0) return pz >= 0 ? INFINITY : -INFINITY;
  return std::asinh(pz / pt);
}

double four_phi(double px, double py) {
  return std::atan2(py, px);
}

double delta_phi(double a, double b) {
  constexpr double pi = std::numbers::pi;
  double d = std::fmod(a - b + pi, 2 * pi);
  if (d < 0) d += 2 * pi;
  return d - pi;
}

JetKinematics jet_kinematics(std::span<const float> c) {
  double e = 0, px = 0, py = 0, pz = 0;
  int n = 0;
  for (size_t i = 0; i + 3 < c.size(); i += 4) {
    if (c[i] <= 0) continue;
    e += c[i], px += c[i + 1], py += c[i + 2], pz += c[i + 3];
    ++n;
  }
  JetKinematics k;
  k.multiplicity = n;
  k.pt = four_pt(px, py);
  k.eta = n > 0 ? four_eta(px, py, pz) : 0.0;
  k.phi = four_phi(px, py);
  k.mass = std::sqrt(std::max(0.0, e * e - px * px - py * py - pz * pz));
  return k;
}

}  // namespace toptag
