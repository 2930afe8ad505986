#include "datasets/generator.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fastjet/ClusterSequence.hh>
#include <map>
#include <numbers>

#include "data/reference_file.h"
#include "datasets/shower.h"
#include "io/progress.h"
#include "nn/check.h"

namespace toptag {

namespace {

constexpr double kPi = std::numbers::pi;
constexpr double kTopMass = 173.0, kTopWidth = 1.4, kWMass = 80.4, kWWidth = 2.1, kBMass = 4.8;
constexpr int kMaxAttempts = 10000;

// Non-relativistic Breit-Wigner (Cauchy) mass, m = mass + width/2 tan(pi (u - 1/2)), truncated to
// +-`window` widths. For the narrow top and W (width/mass of 0.8% and 2.6%) the relativistic form,
// Cauchy in m^2, would differ little.
double breit_wigner(Rng& rng, double mass, double width, double window = 10) {
  for (;;) {
    const double m = mass + 0.5 * width * std::tan(kPi * (rng.uniform() - 0.5));
    if (std::fabs(m - mass) < window * width) return m;
  }
}

// Isotropic unit vector.
void random_direction(Rng& rng, double& x, double& y, double& z) {
  const double cos_t = rng.uniform(-1, 1), sin_t = std::sqrt(1 - cos_t * cos_t), phi = 2 * kPi * rng.uniform();
  x = sin_t * std::cos(phi), y = sin_t * std::sin(phi), z = cos_t;
}

// Two-body decay of a particle of mass M at rest into masses m1, m2: momenta back to back, isotropic.
void two_body(Rng& rng, double M, double m1, double m2, FourVector& a, FourVector& b) {
  const double p =
      std::sqrt(std::max(0.0, (M * M - (m1 + m2) * (m1 + m2)) * (M * M - (m1 - m2) * (m1 - m2)))) / (2 * M);
  double x, y, z;
  random_direction(rng, x, y, z);
  a = {std::sqrt(p * p + m1 * m1), p * x, p * y, p * z};
  b = {std::sqrt(p * p + m2 * m2), -p * x, -p * y, -p * z};
}

FourVector boost_from_rest(const FourVector& v, const FourVector& parent) {
  double bx, by, bz;
  parent.velocity(bx, by, bz);
  return v.boosted(bx, by, bz);
}

// The smaller angle between a and any of `others` (capped at `cap`): the coherence angle of a's shower.
double partner_angle(const FourVector& a, std::initializer_list<FourVector> others, double cap) {
  double best = cap;
  for (const FourVector& o : others) {
    const double c = (a.px * o.px + a.py * o.py + a.pz * o.pz) / (a.p() * o.p());
    best = std::min(best, std::acos(std::clamp(c, -1.0, 1.0)));
  }
  return best;
}

struct Event {
  std::vector<Parton> hard;           // partons that shower
  std::vector<double> shower_angles;  // their maximum emission angles
  std::vector<FourVector> quarks;     // decay quarks that must lie inside the jet (tops)
  FourVector truth;                   // the top (zeros for QCD)
  double eta = 0, phi = 0;            // direction of the hard object, for the underlying event
};

Event top_event(Rng& rng) {
  Event ev;
  const double pt = rng.uniform(540, 720), eta = rng.uniform(-1.9, 1.9), phi = rng.uniform(-kPi, kPi);
  const double m_top = breit_wigner(rng, kTopMass, kTopWidth), m_w = breit_wigner(rng, kWMass, kWWidth);
  ev.truth = FourVector::from_pt_eta_phi_m(pt, eta, phi, m_top);
  FourVector b, w, q1, q2;
  two_body(rng, m_top, kBMass, m_w, b, w);  // top rest frame
  two_body(rng, m_w, 0.0, 0.0, q1, q2);     // W rest frame
  q1 = boost_from_rest(boost_from_rest(q1, w), ev.truth);
  q2 = boost_from_rest(boost_from_rest(q2, w), ev.truth);
  b = boost_from_rest(b, ev.truth);
  // The shower is massless: give the b its energy as a massless parton along its direction.
  b = FourVector::massless(b.e, b.px / b.p(), b.py / b.p(), b.pz / b.p());
  ev.quarks = {b, q1, q2};
  ev.hard = {{b, Flavour::quark}, {q1, Flavour::quark}, {q2, Flavour::quark}};
  // q1 q2 form a colour singlet (the W); the b connects to the beam remnants: wide-angle radiation.
  ev.shower_angles = {1.0, partner_angle(q1, {q2}, 1.0), partner_angle(q2, {q1}, 1.0)};
  ev.eta = eta, ev.phi = phi;
  return ev;
}

Event qcd_event(Rng& rng) {
  Event ev;
  // A steeply falling parton spectrum, dN/dpT ~ pT^-5, over the range that feeds the jet window.
  const double lo = 555, hi = 720, u = rng.uniform();
  const double pt = std::pow(std::pow(lo, -4) + u * (std::pow(hi, -4) - std::pow(lo, -4)), -0.25);
  const double eta = rng.uniform(-1.9, 1.9), phi = rng.uniform(-kPi, kPi);
  const Flavour f = rng.uniform() < 0.5 ? Flavour::gluon : Flavour::quark;
  ev.hard = {{FourVector::from_pt_eta_phi_m(pt, eta, phi, 0.0), f}};
  ev.shower_angles = {1.0};
  ev.eta = eta, ev.phi = phi;
  return ev;
}

// Detector: charged hadrons (2/3) are tracks with 1% pT resolution above 0.5 GeV; neutrals go into
// calorimeter towers of 0.05 x 0.05 in (eta, phi), smeared by 100%/sqrt(E) (+) 5%, kept above 1 GeV.
std::vector<fastjet::PseudoJet> detector_response(const std::vector<FourVector>& particles, Rng& rng) {
  constexpr double kTrackPtMin = 0.5, kTowerEMin = 1.0;
  std::vector<fastjet::PseudoJet> out;
  std::map<TowerCell, FourVector> towers;
  for (const FourVector& p : particles) {
    if (p.e <= 0) continue;
    if (rng.uniform() < 2.0 / 3.0) {
      if (p.pt() < kTrackPtMin) continue;
      const double s = 1 + 0.01 * rng.normal();
      out.emplace_back(p.px * s, p.py * s, p.pz * s, p.e * s);
    } else {
      FourVector& t = towers[tower_cell(p.eta(), p.phi())];
      t = t + p;
    }
  }
  for (auto& [cell, t] : towers) {
    const double sigma = std::sqrt(1.0 / t.e + 0.05 * 0.05);
    const double e = t.e * std::max(0.0, 1 + sigma * rng.normal());
    if (e < kTowerEMin) continue;
    // The tower's direction is its cell centre, as a calorimeter measures it.
    const double eta = tower_centre_eta(cell);
    const FourVector v = FourVector::from_pt_eta_phi_m(e / std::cosh(eta), eta, tower_centre_phi(cell), 0.0);
    out.emplace_back(v.px, v.py, v.pz, v.e);
  }
  return out;
}

}  // namespace

TowerCell tower_cell(double eta, double phi) {
  double from_minus_pi = std::fmod(phi + kPi, 2 * kPi);  // exact; phi = +pi lands on -pi
  if (from_minus_pi < 0) from_minus_pi += 2 * kPi;
  return {static_cast<int>(std::floor(eta / kTowerCell)), static_cast<int>(std::floor(from_minus_pi / kTowerCell))};
}

double tower_centre_eta(const TowerCell& cell) {
  return (cell.eta + 0.5) * kTowerCell;
}

double tower_centre_phi(const TowerCell& cell) {
  return (cell.phi + 0.5) * kTowerCell - kPi;
}

GeneratedJet generate_jet(const GeneratorOptions& options, int64_t index) {
  Rng rng = Rng(options.seed).fork(static_cast<uint64_t>(index));
  GeneratedJet jet;
  jet.label = rng.uniform() < options.signal_fraction ? 1 : 0;
  const fastjet::JetDefinition definition(fastjet::antikt_algorithm, options.jet_radius);
  ShowerOptions shower_options;
  std::vector<Parton> partons;
  std::vector<FourVector> hadrons;
  for (jet.attempts = 1; jet.attempts <= kMaxAttempts; ++jet.attempts) {
    Event ev = jet.label ? top_event(rng) : qcd_event(rng);
    partons.clear();
    hadrons.clear();
    for (size_t i = 0; i < ev.hard.size(); ++i) shower(ev.hard[i], ev.shower_angles[i], shower_options, rng, partons);
    hadronize(partons, rng, hadrons);
    // Underlying event: soft particles spread around the jet region.
    const int n_ue = static_cast<int>(options.underlying_event_particles * (0.5 + rng.uniform()));
    for (int i = 0; i < n_ue; ++i) {
      const double pt = -0.8 * std::log(rng.uniform(1e-12, 1.0));
      hadrons.push_back(
          FourVector::from_pt_eta_phi_m(pt, ev.eta + rng.uniform(-1.5, 1.5), ev.phi + rng.uniform(-1.5, 1.5), 0.0));
    }
    std::vector<fastjet::PseudoJet> inputs = detector_response(hadrons, rng);
    fastjet::ClusterSequence cs(inputs, definition);
    std::vector<fastjet::PseudoJet> jets = fastjet::sorted_by_pt(cs.inclusive_jets(options.jet_pt_min * 0.5));
    if (jets.empty()) continue;
    const fastjet::PseudoJet& leading = jets.front();
    if (leading.pt() < options.jet_pt_min || leading.pt() > options.jet_pt_max ||
        std::fabs(leading.eta()) > options.jet_abs_eta_max)
      continue;
    const FourVector axis{leading.e(), leading.px(), leading.py(), leading.pz()};
    bool contained = true;
    for (const FourVector& q : ev.quarks) contained = contained && delta_r(q, axis) < options.jet_radius;
    if (!contained) continue;

    std::vector<fastjet::PseudoJet> constituents = fastjet::sorted_by_pt(leading.constituents());
    jet.constituents.assign(static_cast<size_t>(kMaxConstituents) * 4, 0.0f);
    for (size_t i = 0; i < constituents.size() && i < static_cast<size_t>(kMaxConstituents); ++i) {
      const fastjet::PseudoJet& c = constituents[i];
      jet.constituents[i * 4] = static_cast<float>(c.e());
      jet.constituents[i * 4 + 1] = static_cast<float>(c.px());
      jet.constituents[i * 4 + 2] = static_cast<float>(c.py());
      jet.constituents[i * 4 + 3] = static_cast<float>(c.pz());
    }
    if (jet.label) {
      jet.truth[0] = static_cast<float>(ev.truth.e), jet.truth[1] = static_cast<float>(ev.truth.px);
      jet.truth[2] = static_cast<float>(ev.truth.py), jet.truth[3] = static_cast<float>(ev.truth.pz);
    }
    return jet;
  }
  fail("generator: no event passed the jet selection in {} attempts (jet {})", kMaxAttempts, index);
}

GenerateReport generate_file(const std::string& path, int64_t count, const GeneratorOptions& options) {
  if (count < 1) fail("--jets must be at least 1, got {}", count);
  if (options.signal_fraction < 0 || options.signal_fraction > 1)
    fail("--signal-fraction must be in [0, 1], got {}", options.signal_fraction);
  if (options.ttv < 0 || options.ttv > 2) fail("--ttv must be 0, 1 or 2, got {}", options.ttv);
  fastjet::ClusterSequence::set_fastjet_banner_stream(nullptr);  // silence the banner (and its first-use race)
  constexpr int64_t kChunk = 2048;
  ReferenceWriter writer(path);
  GenerateReport report;
  int64_t attempts = 0;
  Progress progress("generate " + path, count, "jets");
  JetBatch batch;
  std::vector<GeneratedJet> chunk;
  for (int64_t start = 0; start < count; start += kChunk) {
    const int64_t n = std::min(kChunk, count - start);
    chunk.assign(static_cast<size_t>(n), GeneratedJet{});
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t i = 0; i < n; ++i) {
      try {
        chunk[i] = generate_jet(options, start + i);
      } catch (...) {
#pragma omp critical
        error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    batch.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      std::copy(chunk[i].constituents.begin(), chunk[i].constituents.end(),
                batch.constituents.begin() + i * kMaxConstituents * 4);
      std::copy_n(chunk[i].truth, 4, batch.truth.begin() + i * 4);
      batch.labels[i] = chunk[i].label;
      batch.ttv[i] = options.ttv;
      report.signal += chunk[i].label;
      attempts += chunk[i].attempts;
    }
    writer.append(batch);
    progress.advance(n);
  }
  writer.close();
  progress.finish();
  report.jets = count;
  report.seconds = progress.elapsed_seconds();
  report.mean_attempts = static_cast<double>(attempts) / static_cast<double>(count);
  return report;
}

}  // namespace toptag
