// The reference-format reader (against the pandas-written fixture), jet images, the loader.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <set>

#include "data/dataset.h"
#include "data/loader.h"
#include "testing.h"

namespace toptag {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

std::string fixture() {
  return testing::data_path("reference_format_sample.h5");
}

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("toptag_data_" + std::to_string(::getpid()) + "_" + name);
}

TEST(ReferenceFile, ReadsThePandasFixture) {
  ReferenceFile file(fixture());
  EXPECT_EQ(file.size(), 256);
  EXPECT_EQ(file.n_constituents(), 200);
  JetBatch jets;
  NonFiniteReport dropped;
  file.read(0, 256, jets, dropped);
  ASSERT_EQ(jets.size(), 256);
  EXPECT_EQ(dropped.count, 0);
  // Values of row 0 as h5dump prints them.
  EXPECT_NEAR(jets.constituents[0], 224.829, 1e-3);
  EXPECT_NEAR(jets.constituents[1], 65.13, 1e-3);
  EXPECT_NEAR(jets.constituents[3], -134.868, 1e-3);
  EXPECT_EQ(jets.labels[0], 0);
  int64_t tops = 0;
  for (int64_t l : jets.labels) tops += l;
  EXPECT_EQ(tops, 128);
  // Jets sit in the dataset's window: pT in [550, 650] GeV; tops carry a truth four-vector.
  for (int64_t j = 0; j < jets.size(); ++j) {
    const JetKinematics k = jet_kinematics(jets.jet(j));
    EXPECT_GT(k.pt, 540);
    EXPECT_LT(k.pt, 660);
    EXPECT_EQ(jets.truth[j * 4] > 0, jets.labels[j] == 1) << "jet " << j;
  }
}

TEST(ReferenceFile, ReadsARowRangeLikeTheWhole) {
  ReferenceFile file(fixture());
  JetBatch all, part;
  NonFiniteReport dropped;
  file.read(0, 256, all, dropped);
  file.read(100, 7, part, dropped);
  ASSERT_EQ(part.size(), 7);
  EXPECT_EQ(part.rows[0], 100);
  for (int i = 0; i < 7 * 800; ++i) ASSERT_EQ(part.constituents[i], all.constituents[100 * 800 + i]);
}

TEST(ReferenceFile, WriterRoundTripsAndMatchesTheFixtureLayout) {
  JetBatch jets;
  NonFiniteReport dropped;
  ReferenceFile(fixture()).read(0, 50, jets, dropped);
  const fs::path out = temp_file("roundtrip.h5");
  {
    ReferenceWriter writer(out.string());
    writer.append(jets);
    writer.close();
  }
  ReferenceFile back(out.string());
  JetBatch again;
  back.read(0, 50, again, dropped);
  EXPECT_EQ(again.constituents, jets.constituents);
  EXPECT_EQ(again.labels, jets.labels);
  EXPECT_EQ(again.truth, jets.truth);
  // Same compound members as pandas wrote, so h5py code written for the real files reads ours.
  for (const std::string& path : {fixture(), out.string()}) {
    H5Id f = h5_open(path);
    H5Id ds(H5Dopen2(f.get(), "/table/table", H5P_DEFAULT));
    H5Id type(H5Dget_type(ds.get()));
    ASSERT_EQ(H5Tget_nmembers(type.get()), 3) << path;
    for (unsigned i = 0; i < 3; ++i) {
      char* name = H5Tget_member_name(type.get(), i);
      EXPECT_STREQ(name, i == 0 ? "index" : (i == 1 ? "values_block_0" : "values_block_1")) << path;
      H5free_memory(name);
    }
  }
  fs::remove(out);
}

TEST(ReferenceFile, LayoutErrorsNameTheFileAndTheProblem) {
  const fs::path images = temp_file("not_a_table.h5");
  {
    H5Id f = h5_create(images.string());
    h5_write_tensor(f.get(), "images", Tensor::zeros({1, 1, 4, 4}));
  }
  std::string e = error_of([&] { ReferenceFile r(images.string()); });
  EXPECT_NE(e.find("holds no pandas DataFrame"), std::string::npos) << e;
  EXPECT_NE(e.find(images.string()), std::string::npos) << e;

  // A table whose values_block_0 has the wrong width.
  const fs::path narrow = temp_file("narrow.h5");
  {
    ReferenceWriter w(narrow.string(), 3);  // 16 columns: legal layout for 3 constituents...
    JetBatch jets;
    jets.resize(2, 3);
    w.append(jets);
    w.close();
  }
  EXPECT_EQ(ReferenceFile(narrow.string()).n_constituents(), 3);
  {  // ...but names that do not match the columns are caught.
    H5Id f = h5_open(narrow.string(), true);
    H5Id ds(H5Dopen2(f.get(), "/table/table", H5P_DEFAULT));
    h5_set_attr(ds.get(), "values_block_0_kind", make_pandas_kind({"a", "b"}));
  }
  e = error_of([&] { ReferenceFile r(narrow.string()); });
  EXPECT_NE(e.find("values_block_0 in /table/table has 16 columns but its attribute values_block_0_kind names 2"),
            std::string::npos)
      << e;

  // Labels other than 0/1.
  const fs::path bad_labels = temp_file("labels.h5");
  {
    JetBatch jets;
    jets.resize(3);
    jets.labels = {0, 1, 7};
    ReferenceWriter w(bad_labels.string());
    w.append(jets);
    w.close();
  }
  ReferenceFile bl(bad_labels.string());
  JetBatch got;
  NonFiniteReport dropped;
  e = error_of([&] { bl.read(0, 3, got, dropped); });
  EXPECT_NE(e.find("row 2 has label is_signal_new = 7"), std::string::npos) << e;

  // Not HDF5 at all.
  const fs::path text = temp_file("text.h5");
  std::ofstream(text) << "hello";
  e = error_of([&] { JetFile f(text.string()); });
  EXPECT_NE(e.find("not an HDF5 file"), std::string::npos) << e;
  for (const auto& p : {images, narrow, bad_labels, text}) fs::remove(p);
}

TEST(ReferenceFile, NonFiniteJetsAreSkippedAndReported) {
  JetBatch jets;
  NonFiniteReport dropped;
  ReferenceFile(fixture()).read(0, 10, jets, dropped);
  jets.constituents[3 * 800 + 5] = NAN;
  jets.constituents[7 * 800 + 2] = INFINITY;
  const fs::path out = temp_file("nan.h5");
  {
    ReferenceWriter w(out.string());
    w.append(jets);
    w.close();
  }
  JetBatch got;
  ReferenceFile(out.string()).read(0, 10, got, dropped);
  EXPECT_EQ(got.size(), 8);
  EXPECT_EQ(dropped.count, 2);
  EXPECT_EQ(dropped.first_row, 3);
  for (int64_t r : got.rows) EXPECT_TRUE(r != 3 && r != 7);
  fs::remove(out);
}

// ---------------------------------------------------------------------------------------------
// Other pandas layouts (tests/data/make_pandas_layouts.py): the first 16 jets of the fixture,
// written by pandas in its fixed format, under other keys, with columns in other blocks and dtypes.

constexpr int64_t kLayoutRows = 16;

std::string layouts() {
  return testing::data_path("pandas_layouts_sample.h5");
}

JetBatch read_jets(const std::string& path, const std::string& key = "") {
  ReferenceFile file(path, key);
  EXPECT_EQ(file.size(), kLayoutRows) << path << " " << key;
  JetBatch jets;
  NonFiniteReport dropped;
  file.read(0, file.size(), jets, dropped);
  EXPECT_EQ(dropped.count, 0);
  return jets;
}

void expect_same_jets(const JetBatch& got, const JetBatch& want, const std::string& what) {
  EXPECT_EQ(got.n_constituents, want.n_constituents) << what;
  EXPECT_EQ(got.constituents, want.constituents) << what;
  EXPECT_EQ(got.truth, want.truth) << what;
  EXPECT_EQ(got.labels, want.labels) << what;
  EXPECT_EQ(got.ttv, want.ttv) << what;
}

TEST(PandasLayouts, EveryLayoutReadsAsThePlainFile) {
  JetBatch plain;
  NonFiniteReport dropped;
  ReferenceFile(fixture()).read(0, kLayoutRows, plain, dropped);
  ASSERT_EQ(plain.size(), kLayoutRows);
  // to_hdf(path, "table"): the fixed format, its only key found by itself.
  expect_same_jets(read_jets(testing::data_path("pandas_fixed_sample.h5")), plain, "fixed");
  for (const std::string key : {"jets", "/jets", "shuffled", "mixed"})
    expect_same_jets(read_jets(layouts(), key), plain, key);
  // Images, through JetFile as every command reads jets.
  ImageOptions o;
  o.size = 16;
  const Tensor want = read_all_images(JetFile(fixture()), o, kLayoutRows).images;
  const ImageSet got = read_all_images(JetFile(layouts(), "shuffled"), o);
  testing::expect_close(got.images, want, "shuffled images", 0, 0);
  EXPECT_EQ(got.labels, plain.labels);
}

TEST(PandasLayouts, ErrorsNameTheFileKeyAndColumn) {
  std::string e = error_of([] { ReferenceFile f(layouts()); });
  EXPECT_NE(e.find(layouts()), std::string::npos) << e;
  EXPECT_NE(e.find("choose one with --key"), std::string::npos) << e;
  EXPECT_NE(e.find("/jets, /mixed, /no_e17, /no_label, /shuffled, /text_label"), std::string::npos) << e;
  e = error_of([] { JetFile f(layouts(), "nope"); });
  EXPECT_NE(e.find("has no pandas key 'nope' (keys: /jets,"), std::string::npos) << e;
  e = error_of([] { ReferenceFile f(layouts(), "no_e17"); });
  EXPECT_NE(e.find("key '/no_e17' has no column 'E_17'"), std::string::npos) << e;
  e = error_of([] { ReferenceFile f(layouts(), "no_label"); });
  EXPECT_NE(e.find("key '/no_label' has no label column 'is_signal_new'"), std::string::npos) << e;
  e = error_of([] { ReferenceFile f(layouts(), "text_label"); });
  EXPECT_NE(e.find("column 'is_signal_new' under key '/text_label' is not numeric (values_block_"), std::string::npos)
      << e;
  EXPECT_NE(e.find("holds strings"), std::string::npos) << e;
}

// ---------------------------------------------------------------------------------------------
// Jet images

// Massless constituents at (pT, eta, phi) offsets from a jet at (eta0, phi0), padded to 200.
std::vector<float> make_jet(const std::vector<std::array<double, 3>>& hits, double eta0, double phi0) {
  std::vector<float> c(kMaxConstituents * 4, 0.0f);
  for (size_t i = 0; i < hits.size(); ++i) {
    const double pt = hits[i][0], eta = eta0 + hits[i][1], phi = phi0 + hits[i][2];
    c[i * 4] = static_cast<float>(pt * std::cosh(eta));
    c[i * 4 + 1] = static_cast<float>(pt * std::cos(phi));
    c[i * 4 + 2] = static_cast<float>(pt * std::sin(phi));
    c[i * 4 + 3] = static_cast<float>(pt * std::sinh(eta));
  }
  return c;
}

std::vector<float> image_of(const std::vector<float>& jet, const ImageOptions& o) {
  std::vector<float> img(static_cast<size_t>(o.pixels()));
  jet_image(jet, o, img);
  return img;
}

const std::vector<std::array<double, 3>> kThreeProngs = {{300, 0.0, 0.0},  {150, 0.25, 0.1}, {90, -0.1, 0.3},
                                                         {20, 0.05, -0.2}, {8, -0.3, -0.1},  {4, 0.4, 0.35}};

TEST(JetImage, IntensitySumsToOneAndPaddingIsIgnored) {
  ImageOptions o;
  std::vector<float> jet = make_jet(kThreeProngs, 0.3, 1.0);
  std::vector<float> img = image_of(jet, o);
  double sum = 0;
  for (float v : img) sum += v;
  EXPECT_NEAR(sum, 1.0, 1e-5);
  // Garbage momenta behind E = 0 (padding) change nothing.
  std::vector<float> padded = jet;
  padded[50 * 4 + 1] = 400, padded[50 * 4 + 2] = -3;
  EXPECT_EQ(image_of(padded, o), img);
}

TEST(JetImage, RotationInEtaPhiGivesTheSameImage) {
  ImageOptions o;
  const std::vector<float> reference = image_of(make_jet(kThreeProngs, 0.0, 0.0), o);
  for (double angle : {0.4, 1.3, 2.9, -2.0}) {
    std::vector<std::array<double, 3>> rotated;
    for (const auto& h : kThreeProngs)
      rotated.push_back(
          {h[0], h[1] * std::cos(angle) - h[2] * std::sin(angle), h[1] * std::sin(angle) + h[2] * std::cos(angle)});
    const std::vector<float> img = image_of(make_jet(rotated, 0.0, 0.0), o);
    double diff = 0;
    for (size_t i = 0; i < img.size(); ++i) diff += std::abs(img[i] - reference[i]);
    EXPECT_LT(diff, 1e-4) << "angle " << angle;
  }
  // Without rotation the images differ: the step is really doing something.
  o.rotate = false;
  std::vector<std::array<double, 3>> turned;
  for (const auto& h : kThreeProngs) turned.push_back({h[0], -h[2], h[1]});
  EXPECT_NE(image_of(make_jet(turned, 0, 0), o), image_of(make_jet(kThreeProngs, 0, 0), o));
}

TEST(JetImage, PhiWrapAroundAtPi) {
  ImageOptions o;
  // The same jet at phi = 0 and straddling +-pi must give the same image.
  const std::vector<float> at_zero = image_of(make_jet(kThreeProngs, 0.5, 0.0), o);
  const std::vector<float> at_pi = image_of(make_jet(kThreeProngs, 0.5, std::numbers::pi - 0.05), o);
  double diff = 0;
  for (size_t i = 0; i < at_zero.size(); ++i) diff += std::abs(at_zero[i] - at_pi[i]);
  EXPECT_LT(diff, 1e-4);
}

TEST(JetImage, CentreFlipAndPixelPlacement) {
  ImageOptions o;
  o.size = 8;
  o.extent = 0.8;
  o.rotate = false;
  o.normalize = false;
  // One hit at the jet axis and no centring: lands in the pixel just above-right of the centre.
  o.center = false;
  o.flip = false;
  std::vector<float> img = image_of(make_jet({{100, 0.05, 0.05}}, 0.0, 0.0), o);
  EXPECT_NEAR(img[4 * 8 + 4], 100, 1e-3);
  // Two hits, the brighter at negative eta: flipping moves it to positive x (column >= 4).
  o.flip = true;
  img = image_of(make_jet({{100, -0.5, 0.0}, {10, 0.5, 0.0}}, 0.0, 0.0), o);
  float left = 0, right = 0;
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c) (c < 4 ? left : right) += img[r * 8 + c];
  EXPECT_GT(right, left);
  // Centring puts the pT-weighted centroid at the image centre even for an off-axis jet.
  o.center = true;
  o.flip = false;
  img = image_of(make_jet({{50, 0.3, 0.3}, {50, 0.3, 0.3}}, 0.0, 0.0), o);
  EXPECT_NEAR(img[4 * 8 + 4], 100, 1e-2);
}

TEST(JetImage, ChannelsAreCopies) {
  ImageOptions o;
  o.channels = 3;
  std::vector<float> img = image_of(make_jet(kThreeProngs, 0, 0), o);
  const size_t plane = 40 * 40;
  for (size_t i = 0; i < plane; ++i) {
    EXPECT_EQ(img[i], img[plane + i]);
    EXPECT_EQ(img[i], img[2 * plane + i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Loader

std::vector<int64_t> epoch_rows(Loader& loader, int64_t epoch, int64_t skip = 0) {
  loader.start_epoch(epoch, skip);
  std::vector<int64_t> rows;
  while (auto b = loader.next()) {
    EXPECT_EQ(b->images.dim(0), static_cast<int64_t>(b->labels.size()));
    rows.insert(rows.end(), b->rows.begin(), b->rows.end());
  }
  return rows;
}

TEST(Loader, SameSeedSameOrderEveryRowOncePerEpoch) {
  JetFile file(fixture());
  LoaderOptions opt;
  opt.batch_size = 10;
  opt.seed = 5;
  opt.window_bytes = 1;  // force many windows (one block each)
  Loader a(file, ImageOptions{}, opt), b(file, ImageOptions{}, opt);
  std::vector<int64_t> first = epoch_rows(a, 0);
  EXPECT_EQ(first, epoch_rows(b, 0));
  EXPECT_EQ(first.size(), 256u);
  EXPECT_EQ(std::set<int64_t>(first.begin(), first.end()).size(), 256u);
  EXPECT_NE(first, epoch_rows(a, 1));  // a new epoch, a new order
  // Resuming after 3 batches continues exactly where the uninterrupted epoch was.
  std::vector<int64_t> resumed = epoch_rows(b, 0, 3);
  EXPECT_EQ(resumed, std::vector<int64_t>(first.begin() + 30, first.end()));
}

TEST(Loader, SubsetPartialBatchesAndNoShuffle) {
  JetFile file(fixture());
  LoaderOptions opt;
  opt.batch_size = 16;
  opt.max_jets = 40;
  opt.shuffle = false;
  Loader keep(file, ImageOptions{}, opt);
  std::vector<int64_t> rows = epoch_rows(keep, 0);
  ASSERT_EQ(rows.size(), 40u);
  for (int64_t i = 0; i < 40; ++i) EXPECT_EQ(rows[i], i);
  EXPECT_EQ(keep.batches_per_epoch(), 3);
  opt.drop_last = true;
  Loader drop(file, ImageOptions{}, opt);
  EXPECT_EQ(epoch_rows(drop, 0).size(), 32u);
  EXPECT_EQ(drop.batches_per_epoch(), 2);
}

// Data-parallel loading: every part draws the same batches and makes its slice of each; the parts
// side by side are the whole batch, images included. A first row starts the file further in.
TEST(Loader, PartsAreSlicesOfTheSameBatchesAndFirstRowSkips) {
  JetFile file(fixture());
  LoaderOptions opt;
  opt.batch_size = 12;
  opt.seed = 3;
  Loader whole(file, ImageOptions{}, opt);
  whole.start_epoch(1);
  std::vector<std::unique_ptr<Loader>> parts;
  for (int part = 0; part < 3; ++part) {
    opt.part = part, opt.parts = 3;
    parts.push_back(std::make_unique<Loader>(file, ImageOptions{}, opt));
    parts.back()->start_epoch(1);
  }
  int64_t batches = 0;
  while (std::optional<Batch> w = whole.next()) {
    std::vector<int64_t> rows;
    std::vector<float> pixels;
    for (auto& p : parts) {
      std::optional<Batch> b = p->next();
      ASSERT_TRUE(b);
      EXPECT_EQ(b->whole_rows, static_cast<int64_t>(w->rows.size()));
      rows.insert(rows.end(), b->rows.begin(), b->rows.end());
      pixels.insert(pixels.end(), b->images.data(), b->images.data() + b->images.numel());
    }
    EXPECT_EQ(rows, w->rows);
    EXPECT_EQ(pixels, std::vector<float>(w->images.data(), w->images.data() + w->images.numel()));
    ++batches;
  }
  EXPECT_EQ(batches, 22);  // 256 jets: 21 batches of 12 and one of 4 (3 parts of 1 or 2 rows)
  for (auto& p : parts) EXPECT_FALSE(p->next());

  LoaderOptions tail;
  tail.shuffle = false;
  tail.first_row = 250;
  Loader last(file, ImageOptions{}, tail);
  EXPECT_EQ(epoch_rows(last, 0), (std::vector<int64_t>{250, 251, 252, 253, 254, 255}));
  tail.part = 3, tail.parts = 3;
  EXPECT_THROW(Loader(file, ImageOptions{}, tail), Error);
}

TEST(Loader, ImagesMatchDirectConversionAndCachedFilesLoadToo) {
  JetFile file(fixture());
  ImageOptions o;
  o.size = 16;
  LoaderOptions opt;
  opt.batch_size = 256;
  opt.shuffle = false;
  Loader loader(file, o, opt);
  loader.start_epoch(0);
  std::optional<Batch> batch = loader.next();
  ASSERT_TRUE(batch);
  ImageSet direct = read_all_images(file, o);
  testing::expect_close(batch->images, direct.images, "loader images", 0, 0);

  const fs::path cache = temp_file("cache.h5");
  {
    ImageWriter w(cache.string(), o);
    w.append(direct.images, direct.labels);
    w.close();
  }
  JetFile cached(cache.string());
  EXPECT_FALSE(cached.has_constituents());
  ImageOptions want;
  want.size = 40;
  std::string e = error_of([&] { cached.image_options(want, true, false); });
  EXPECT_NE(e.find("holds 16x16 images"), std::string::npos) << e;
  Loader from_cache(cached, cached.image_options(ImageOptions{}, false, false), opt);
  from_cache.start_epoch(0);
  std::optional<Batch> again = from_cache.next();
  ASSERT_TRUE(again);
  testing::expect_close(again->images, direct.images, "cached images", 0, 0);
  EXPECT_EQ(again->labels, direct.labels);
  fs::remove(cache);
}

}  // namespace
}  // namespace toptag
