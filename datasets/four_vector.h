// Minimal four-vector algebra for event generation (GeV, natural units, metric +---).
#pragma once

#include <cmath>

namespace toptag {

struct FourVector {
  double e = 0, px = 0, py = 0, pz = 0;

  FourVector operator+(const FourVector& o) const { return {e + o.e, px + o.px, py + o.py, pz + o.pz}; }
  FourVector operator*(double s) const { return {e * s, px * s, py * s, pz * s}; }
  double p() const { return std::sqrt(px * px + py * py + pz * pz); }
  double pt() const { return std::hypot(px, py); }
  double m2() const { return e * e - px * px - py * py - pz * pz; }
  double m() const { return std::sqrt(std::max(0.0, m2())); }
  double eta() const {
    const double t = pt();
    return t > 0 ? std::asinh(pz / t) : (pz >= 0 ? 1e9 : -1e9);
  }
  double phi() const { return std::atan2(py, px); }

  // From transverse momentum, pseudorapidity, azimuth and mass.
  static FourVector from_pt_eta_phi_m(double pt, double eta, double phi, double m) {
    const double px = pt * std::cos(phi), py = pt * std::sin(phi), pz = pt * std::sinh(eta);
    return {std::sqrt(px * px + py * py + pz * pz + m * m), px, py, pz};
  }
  // Massless, with energy e along the unit vector (x, y, z).
  static FourVector massless(double e, double x, double y, double z) { return {e, e * x, e * y, e * z}; }

  // This vector boosted by velocity (bx, by, bz) (|b| < 1): from the rest frame of a particle moving with b to the lab.
  FourVector boosted(double bx, double by, double bz) const {
    const double b2 = bx * bx + by * by + bz * bz;
    if (b2 <= 0) return *this;
    const double gamma = 1.0 / std::sqrt(1.0 - b2), bp = bx * px + by * py + bz * pz;
    const double g2 = (gamma - 1.0) / b2;
    return {gamma * (e + bp), px + g2 * bp * bx + gamma * bx * e, py + g2 * bp * by + gamma * by * e,
            pz + g2 * bp * bz + gamma * bz * e};
  }
  // The boost velocity taking a particle at rest to this four-momentum.
  void velocity(double& bx, double& by, double& bz) const { bx = px / e, by = py / e, bz = pz / e; }
};

inline double delta_r(const FourVector& a, const FourVector& b) {
  double dphi = std::fabs(a.phi() - b.phi());
  if (dphi > M_PI) dphi = 2 * M_PI - dphi;
  const double deta = a.eta() - b.eta();
  return std::sqrt(deta * deta + dphi * dphi);
}

}  // namespace toptag
