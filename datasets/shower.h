// A final-state parton shower ordered in emission angle (coherent branching, as in HERWIG's
// original algorithm; Marchesini & Webber 1984, Ellis-Stirling-Webber ch. 5), and a simple
// hadronisation. Massless partons, small-angle kinematics.
//
// Each parton of energy E radiates with probability per unit log(theta^2) and z
//   dP = alpha_s(k_t) / (2 pi) * P(z) dz dtheta^2 / theta^2,   k_t = z (1 - z) E theta,
// with the leading-order splitting functions P_qq, P_gg, P_gq and a one-loop running coupling.
// Emissions are sampled with the Sudakov veto algorithm from an overestimate of the rate, down
// to the cutoff k_t > kCutoffGeV. Daughters radiate only inside the angle of their parent's splitting.
#pragma once

#include <vector>

#include "datasets/four_vector.h"
#include "nn/random.h"

namespace toptag {

enum class Flavour { quark, gluon };

struct Parton {
  FourVector p;
  Flavour flavour;
};

struct ShowerOptions {
  double cutoff_gev = 1.0;  // minimum emission k_t
  double lambda_qcd = 0.2;  // one-loop Lambda for alpha_s, 5 flavours
  int max_partons = 400;    // safety bound per shower
};

// Showers `start` radiating at angles below theta_max; appends the final partons to `out`.
void shower(const Parton& start, double theta_max, const ShowerOptions& options, Rng& rng, std::vector<Parton>& out);

// Turns each parton into a few hadrons (massless) sharing its momentum with small transverse kicks.
void hadronize(const std::vector<Parton>& partons, Rng& rng, std::vector<FourVector>& hadrons);

double alpha_s(double kt, double lambda_qcd);

}  // namespace toptag
