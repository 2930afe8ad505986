// toptag generate | images | info: make jets, turn them into cached images, summarise a file.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "apps/commands.h"
#include "apps/image_options.h"
#include "data/dataset.h"
#include "datasets/generator.h"
#include "io/files.h"
#include "io/progress.h"
#include "nn/check.h"

namespace toptag::apps {

namespace {

struct GenerateArgs {
  std::string output;
  int64_t jets = 10000;
  GeneratorOptions options;
  int threads = 0;
};

void run_generate(const GenerateArgs& a) {
  apply_threads(a.threads);
  GenerateReport r = generate_file(a.output, a.jets, a.options);
  fmt::print("wrote {} jets ({} top, {} QCD) to {} in {} ({:.0f} jets/s, {:.2f} events drawn per accepted jet)\n",
             r.jets, r.signal, r.jets - r.signal, a.output, format_duration(r.seconds),
             r.jets / std::max(r.seconds, 1e-9), r.mean_attempts);
}

struct ImagesArgs {
  std::string input, output, key;
  ImageArgs image;
  int64_t max_jets = 0;
  int threads = 0;
};

void run_images(const ImagesArgs& a) {
  FileUse().reads("--input", a.input).writes("--output", a.output).check();
  apply_threads(a.threads);
  JetFile file(a.input, a.key);
  if (!file.has_constituents()) fail("{}: already an image file", a.input);
  const ImageOptions options = a.image.resolve(file);
  validate(options);
  const int64_t n = a.max_jets > 0 ? std::min(a.max_jets, file.size()) : file.size();
  ImageWriter writer(a.output, options);
  NonFiniteReport dropped;
  Progress progress("images " + a.output, n, "jets");
  constexpr int64_t kChunk = 4096;
  for (int64_t start = 0; start < n; start += kChunk) {
    Examples ex = file.read(start, std::min(kChunk, n - start), dropped);
    writer.append(jet_images(ex.jets.constituents, ex.size(), ex.jets.n_constituents, options), ex.labels);
    progress.advance(std::min(kChunk, n - start));
  }
  writer.close();
  progress.finish();
  warn_skipped(a.input, dropped);
  fmt::print("wrote {} images ({}) to {}\n", writer.size(), options.describe(), a.output);
}

struct Summary {
  std::vector<double> values;
  std::string line(const char* unit) const {
    if (values.empty()) return "-";
    std::vector<double> v = values;
    std::sort(v.begin(), v.end());
    double mean = 0;
    for (double x : v) mean += x;
    mean /= static_cast<double>(v.size());
    auto q = [&](double f) { return v[static_cast<size_t>(f * static_cast<double>(v.size() - 1))]; };
    return fmt::format("mean {:7.1f}  median {:7.1f}  10%-90% [{:.1f}, {:.1f}] {}", mean, q(0.5), q(0.1), q(0.9), unit);
  }
};

struct InfoArgs {
  std::string path, key;
};

void run_info(const InfoArgs& a) {
  const std::string& path = a.path;
  JetFile file(path, a.key);
  const int64_t n = file.size();
  fmt::print("file           {}\n", path);
  if (file.reference()) fmt::print("key            {}\n", file.reference()->key());
  fmt::print("kind           {}\n",
             file.has_constituents() ? "reference-format jets (constituent four-vectors)" : "cached jet images");
  fmt::print("jets           {}\n", n);
  if (!file.has_constituents())
    fmt::print("images         {}x{}x{} ({})\n", file.image_file()->image_size(), file.image_file()->image_size(),
               file.image_file()->channels(), file.image_file()->preprocessing());
  Summary pt[2], mass[2], mult[2];
  int64_t count[2] = {0, 0};
  NonFiniteReport dropped;
  constexpr int64_t kChunk = 8192;
  for (int64_t start = 0; start < n; start += kChunk) {
    Examples ex = file.read(start, std::min(kChunk, n - start), dropped);
    for (int64_t j = 0; j < ex.size(); ++j) {
      const int label = static_cast<int>(ex.labels[j]);
      ++count[label];
      if (!file.has_constituents()) continue;
      const JetKinematics k = jet_kinematics(ex.jets.jet(j));
      pt[label].values.push_back(k.pt);
      mass[label].values.push_back(k.mass);
      mult[label].values.push_back(k.multiplicity);
    }
  }
  const int64_t kept = count[0] + count[1];
  fmt::print("labels         {} top ({:.1f}%), {} QCD ({:.1f}%)\n", count[1],
             100.0 * count[1] / std::max<int64_t>(kept, 1), count[0], 100.0 * count[0] / std::max<int64_t>(kept, 1));
  if (dropped.count > 0)
    fmt::print("non-finite     {} jets hold NaN or inf (first at row {})\n", dropped.count, dropped.first_row);
  if (!file.has_constituents()) return;
  for (int label : {1, 0}) {
    fmt::print("{} jets:\n", label ? "top" : "QCD");
    fmt::print("  pT           {}\n", pt[label].line("GeV"));
    fmt::print("  mass         {}\n", mass[label].line("GeV"));
    fmt::print("  constituents {}\n", mult[label].line(""));
  }
}

}  // namespace

void add_data_commands(CLI::App& app) {
  {
    auto a = std::make_shared<GenerateArgs>();
    CLI::App* cmd =
        app.add_subcommand("generate", "Generate physics-like top and QCD jets in the reference dataset's layout");
    cmd->add_option("--output,-o", a->output, "output HDF5 file")->required();
    cmd->add_option("--jets,-n", a->jets, "number of jets")->default_val(10000)->check(in_range(1, 1e9));
    cmd->add_option("--seed", a->options.seed, "random seed (same seed, same jets, whatever the thread count)")
        ->default_val(1);
    cmd->add_option("--signal-fraction", a->options.signal_fraction, "fraction of top jets")
        ->default_val(0.5)
        ->check(in_range(0, 1));
    cmd->add_option("--ttv", a->options.ttv, "value of the ttv column: 0 train, 1 test, 2 validation")
        ->default_val(0)
        ->check(in_range(0, 2));
    add_threads_option(*cmd, a->threads);
    cmd->callback([a] { run_generate(*a); });
  }
  {
    auto a = std::make_shared<ImagesArgs>();
    CLI::App* cmd = app.add_subcommand("images", "Turn reference-format jets into a cached image file");
    cmd->add_option("--input,-i", a->input, "reference-format jet file")->required()->check(CLI::ExistingFile);
    add_key_option(*cmd, a->key);
    cmd->add_option("--output,-o", a->output, "output image file (/images, /labels)")->required();
    cmd->add_option("--max-jets", a->max_jets, "convert only the first N jets (0: all)")
        ->default_val(0)
        ->check(in_range(0, 1e12));
    a->image.add_to(*cmd);
    add_threads_option(*cmd, a->threads);
    cmd->callback([a] { run_images(*a); });
  }
  {
    auto a = std::make_shared<InfoArgs>();
    CLI::App* cmd =
        app.add_subcommand("info", "Summarise a jet or image file: size, label balance, pT, mass, multiplicity");
    cmd->add_option("file", a->path, "HDF5 file")->required()->check(CLI::ExistingFile);
    add_key_option(*cmd, a->key);
    cmd->callback([a] { run_info(*a); });
  }
}

}  // namespace toptag::apps
