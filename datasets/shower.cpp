#include "datasets/shower.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace toptag {

namespace {

constexpr double kCF = 4.0 / 3.0, kCA = 3.0, kTR = 0.5;
constexpr int kFlavours = 5;
constexpr double kPi = std::numbers::pi;

// Unit vectors u, v perpendicular to the unit vector n.
void orthonormal_basis(const double n[3], double u[3], double v[3]) {
  const double a[3] = {std::fabs(n[0]) < 0.9 ? 1.0 : 0.0, std::fabs(n[0]) < 0.9 ? 0.0 : 1.0, 0.0};
  u[0] = n[1] * a[2] - n[2] * a[1], u[1] = n[2] * a[0] - n[0] * a[2], u[2] = n[0] * a[1] - n[1] * a[0];
  const double lu = std::sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
  for (int i = 0; i < 3; ++i) u[i] /= lu;
  v[0] = n[1] * u[2] - n[2] * u[1], v[1] = n[2] * u[0] - n[0] * u[2], v[2] = n[0] * u[1] - n[1] * u[0];
}

// Massless vector of energy e at angle alpha from the direction n, azimuth phi around it.
FourVector tilted(const double n[3], double e, double alpha, double phi) {
  double u[3], v[3];
  orthonormal_basis(n, u, v);
  const double c = std::cos(alpha), s = std::sin(alpha), cp = std::cos(phi), sp = std::sin(phi);
  return FourVector::massless(e, c * n[0] + s * (cp * u[0] + sp * v[0]), c * n[1] + s * (cp * u[1] + sp * v[1]),
                              c * n[2] + s * (cp * u[2] + sp * v[2]));
}

void direction(const FourVector& p, double n[3]) {
  const double l = p.p();
  n[0] = p.px / l, n[1] = p.py / l, n[2] = p.pz / l;
}

// One branching, if any, of a parton below angle theta_max: returns false when it stops radiating.
struct Branching {
  double theta, z;
  Flavour a, b;  // daughters carrying z and 1 - z
};

bool next_branching(const Parton& parton, double theta_max, const ShowerOptions& o, Rng& rng, Branching& out) {
  const double E = parton.p.e;
  const double theta_min = 4.0 * o.cutoff_gev / E;  // k_t <= E theta / 4
  if (theta_max <= theta_min) return false;
  const double eps = o.cutoff_gev / (E * theta_max) * 1.0001;  // widest z range, at theta_max
  if (eps >= 0.5) return false;
  const double alpha_max = alpha_s(o.cutoff_gev, o.lambda_qcd);
  const double log_range = std::log((1 - eps) / eps);
  // Overestimates: q -> qg: 2 CF / (1 - z); g -> gg: CA (1/z + 1/(1-z)); g -> qq: TR nf.
  const double i_soft = (parton.flavour == Flavour::quark ? 2 * kCF : 2 * kCA) * log_range;
  const double i_split = parton.flavour == Flavour::gluon ? kTR * kFlavours * (1 - 2 * eps) : 0.0;
  const double rate = alpha_max / (2 * kPi) * (i_soft + i_split);  // per unit log(theta^2)

  double theta2 = theta_max * theta_max;
  for (;;) {
    theta2 *= std::pow(rng.uniform(1e-300, 1.0), 1.0 / rate);
    const double theta = std::sqrt(theta2);
    if (theta <= theta_min) return false;
    double z, weight;
    Flavour a, b;
    if (rng.uniform() * (i_soft + i_split) < i_soft) {
      const double one_minus_z = eps * std::pow((1 - eps) / eps, rng.uniform());
      z = 1 - one_minus_z;
      if (parton.flavour == Flavour::quark) {
        weight = (1 + z * z) / 2;  // P_qq / overestimate
        a = Flavour::quark, b = Flavour::gluon;
      } else {
        if (rng.uniform() < 0.5) z = 1 - z;  // the 1/z half of the overestimate
        const double p_gg = kCA * (z / (1 - z) + (1 - z) / z + z * (1 - z));
        weight = p_gg / (kCA * (1 / z + 1 / (1 - z)));
        a = b = Flavour::gluon;
      }
    } else {
      z = eps + (1 - 2 * eps) * rng.uniform();
      weight = z * z + (1 - z) * (1 - z);
      a = b = Flavour::quark;
    }
    const double kt = z * (1 - z) * E * theta;
    if (kt < o.cutoff_gev) continue;
    weight *= alpha_s(kt, o.lambda_qcd) / alpha_max;
    if (rng.uniform() < weight) {
      out = {theta, z, a, b};
      return true;
    }
  }
}

}  // namespace

double alpha_s(double kt, double lambda_qcd) {
  const double b0 = (33.0 - 2.0 * kFlavours) / (12.0 * kPi);
  return 1.0 / (b0 * std::log(kt * kt / (lambda_qcd * lambda_qcd)));
}

void shower(const Parton& start, double theta_max, const ShowerOptions& o, Rng& rng, std::vector<Parton>& out) {
  struct Pending {
    Parton parton;
    double theta_max;
  };
  std::vector<Pending> stack{{start, theta_max}};
  int produced = 1;
  while (!stack.empty()) {
    Pending cur = stack.back();
    stack.pop_back();
    Branching br;
    if (produced >= o.max_partons || !next_branching(cur.parton, cur.theta_max, o, rng, br)) {
      out.push_back(cur.parton);
      continue;
    }
    // Small-angle splitting: daughters at angles (1-z) theta and z theta on opposite sides of the
    // parent's direction, so their transverse momenta balance.
    double n[3];
    direction(cur.parton.p, n);
    const double phi = 2 * kPi * rng.uniform(), E = cur.parton.p.e;
    Parton a{tilted(n, br.z * E, (1 - br.z) * br.theta, phi), br.a};
    Parton b{tilted(n, (1 - br.z) * E, br.z * br.theta, phi + kPi), br.b};
    stack.push_back({a, br.theta});
    stack.push_back({b, br.theta});
    ++produced;
  }
}

void hadronize(const std::vector<Parton>& partons, Rng& rng, std::vector<FourVector>& hadrons) {
  constexpr double kMinHadronEnergy = 0.8, kKickGeV = 0.3;
  for (const Parton& parton : partons) {
    double n[3];
    direction(parton.p, n);
    double remaining = parton.p.e;
    // Leading hadrons take a fraction z of what is left (a hard-ish fragmentation function).
    while (remaining > 2 * kMinHadronEnergy) {
      const double z = std::max(0.1, 1 - std::sqrt(rng.uniform()));
      const double e = std::max(kMinHadronEnergy, z * remaining);
      const double kick = kKickGeV * std::sqrt(-2 * std::log(rng.uniform(1e-12, 1.0)));
      hadrons.push_back(tilted(n, e, std::min(0.5, kick / e), 2 * kPi * rng.uniform()));
      remaining -= e;
    }
    if (remaining > 0) hadrons.push_back(tilted(n, remaining, 0.0, 0.0));
  }
}

}  // namespace toptag
