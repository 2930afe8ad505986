// Jets as the Top Quark Tagging Reference Dataset stores them (Kasieczka, Plehn, Russell et al.):
// the leading constituents by pT as (E, px, py, pz) four-vectors in GeV, zero-padded (E = 0 marks
// padding), a truth top four-vector (zeros for QCD), and the label is_signal_new (1 = top).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace toptag {

constexpr int kMaxConstituents = 200;

// Jets in a flat layout: jet j's constituent i component k is constituents[(j * n + i) * 4 + k].
struct JetBatch {
  int n_constituents = kMaxConstituents;
  std::vector<float> constituents;  // count x n x 4: E, px, py, pz
  std::vector<float> truth;         // count x 4: truthE, truthPX, truthPY, truthPZ
  std::vector<int64_t> labels;      // count: 1 = top, 0 = QCD
  std::vector<int64_t> ttv;         // count: 0 train, 1 test, 2 validation (the dataset's own split tag)
  std::vector<int64_t> rows;        // count: row of each jet in its file

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  std::span<const float> jet(int64_t j) const {
    return {constituents.data() + j * n_constituents * 4, static_cast<size_t>(n_constituents) * 4};
  }
  void resize(int64_t count, int n = kMaxConstituents);
  void clear() { resize(0, n_constituents); }
};

// Kinematics of a jet (the sum of its constituents).
struct JetKinematics {
  double pt = 0, eta = 0, phi = 0, mass = 0;
  int multiplicity = 0;  // non-padding constituents
};
JetKinematics jet_kinematics(std::span<const float> constituents);

// pT, pseudorapidity and azimuth of one four-vector; eta is +-inf for pT = 0.
double four_pt(double px, double py);
double four_eta(double px, double py, double pz);
double four_phi(double px, double py);
// The difference of two azimuths wrapped into [-pi, pi).
double delta_phi(double a, double b);

}  // namespace toptag
