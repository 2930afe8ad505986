// Physics-like top and QCD jets in the reference dataset's layout, for demos and tests where the
// real files (Pythia8 + Delphes, 14 TeV) cannot be downloaded.
//
// Signal: t -> b W, W -> q q' with non-relativistic Breit-Wigner (Cauchy) masses and exact two-body
// decays in the rest frames, boosted to the lab. Background: a light quark or a gluon. Every parton
// showers (shower.h), hadronises, and gets soft underlying-event particles; a simple detector smears
// charged tracks and bins neutral hadrons into calorimeter towers. FastJet anti-kT R = 0.8 clusters
// everything; the leading jet is kept if pT in [550, 650] GeV and |eta| < 2 (and, for tops, if the
// three decay quarks lie within Delta R < 0.8 of it), else the event is drawn again.
//
// Jet i is made from its own random stream derived from (seed, i): the output does not depend on
// the number of threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "data/jets.h"
#include "nn/random.h"

namespace toptag {

struct GeneratorOptions {
  uint64_t seed = 1;
  double signal_fraction = 0.5;
  int64_t ttv = 0;  // stored in the ttv column: 0 train, 1 test, 2 validation
  double jet_pt_min = 550, jet_pt_max = 650, jet_abs_eta_max = 2.0, jet_radius = 0.8;
  double underlying_event_particles = 12;  // mean number per event near the jet
};

// One accepted jet.
struct GeneratedJet {
  std::vector<float> constituents;  // kMaxConstituents x 4, leading first, zero-padded
  float truth[4] = {0, 0, 0, 0};    // top four-vector (E, px, py, pz), zeros for QCD
  int64_t label = 0;
  int attempts = 0;  // events drawn until one passed the selection
};

// Deterministic for (options.seed, index).
GeneratedJet generate_jet(const GeneratorOptions& options, int64_t index);

struct GenerateReport {
  int64_t jets = 0, signal = 0;
  double seconds = 0, mean_attempts = 0;
};

// Writes `count` jets to `path` (reference layout), in parallel, with progress on stderr.
GenerateReport generate_file(const std::string& path, int64_t count, const GeneratorOptions& options);

// The detector's calorimeter: neutral hadrons are summed in towers of kTowerCell x kTowerCell in
// (eta, phi). Cell (eta, phi) covers eta in [eta, eta + 1) * kTowerCell and, with phi taken into
// [-pi, pi), phi + pi in [phi, phi + 1) * kTowerCell; the last phi cell is narrower. A tower is
// measured at its cell's centre.
constexpr double kTowerCell = 0.05;
struct TowerCell {
  int eta = 0, phi = 0;
  auto operator<=>(const TowerCell&) const = default;
};
TowerCell tower_cell(double eta, double phi);
double tower_centre_eta(const TowerCell& cell);
double tower_centre_phi(const TowerCell& cell);  // in [-pi, pi)

}  // namespace toptag
