// Files as a careless or hostile writer makes them: attributes of the wrong type, rank or size,
// forged dimensions, links out of the file or into cycles, non-finite weights, images that do not
// match the model or the training file. Each is an error naming the file and the object; on the
// main before these checks several of them overflowed a buffer or were read silently.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>

#include "data/dataset.h"
#include "data/image_file.h"
#include "io/checkpoint.h"
#include "tagger/inference.h"
#include "tagger/tagger.h"
#include "testing.h"
#include "training/batches.h"

namespace toptag {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

class HostileFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() / ("toptag_hostile_" + std::to_string(::getpid()));
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }

  std::string path(const std::string& name) const { return (dir / name).string(); }

  // A tiny float checkpoint, then `edit` applied to it with the HDF5 C API.
  std::string checkpoint(const std::string& name, const std::function<void(hid_t)>& edit) const {
    ResNet model(ResNetConfig{"resnet10", 1, 4, 16, 2}, 3);
    const std::string p = path(name);
    save_model(p, model);
    const hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    edit(f);
    H5Fclose(f);
    return p;
  }

  // An image file of n images of size x size, channels 1.
  std::string images(const std::string& name, int size, int n = 8) const {
    ImageOptions o;
    o.size = size;
    ImageWriter w(path(name), o);
    Tensor t = Tensor::zeros({n, 1, size, size});
    std::vector<int64_t> labels(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t.data()[i * size * size + i] = 1.0f, labels[static_cast<size_t>(i)] = i % 2;
    w.append(t, labels);
    w.close();
    return path(name);
  }

  fs::path dir;
};

void replace_attr(hid_t obj, const char* name, hid_t type, const std::vector<hsize_t>& dims, const void* data) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  const hid_t space =
      dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, type, data);
  H5Aclose(a);
  H5Sclose(space);
}

TEST_F(HostileFiles, AttributesOfTheWrongRankOrTypeAreErrorsNamingThem) {
  const std::vector<int64_t> many(4096, 1);
  const std::string array_int = checkpoint(
      "array_int.h5", [&](hid_t f) { replace_attr(f, "toptag_format", H5T_NATIVE_INT64, {many.size()}, many.data()); });
  std::string e = error_of([&] { load_model(array_int); });
  EXPECT_NE(e.find("array_int.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("'toptag_format' must hold a single number, found 4096 values"), std::string::npos) << e;

  const std::string string_array = checkpoint("string_array.h5", [&](hid_t f) {
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 8);
    const std::vector<char> text(8 * 6000, 'r');
    replace_attr(f, "arch", type, {6000}, text.data());
    H5Tclose(type);
  });
  e = error_of([&] { load_model(string_array); });
  EXPECT_NE(e.find("'arch' must hold a single string, found 6000 values"), std::string::npos) << e;

  const std::string wrong_class = checkpoint("wrong_class.h5", [&](hid_t f) {
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 3);
    replace_attr(f, "toptag_format", type, {}, "99");
    H5Tclose(type);
  });
  e = error_of([&] { load_model(wrong_class); });
  EXPECT_NE(e.find("'toptag_format' must be a number"), std::string::npos) << e;
}

TEST_F(HostileFiles, ForgedModelShapesAndNonFiniteWeightsAreRefused) {
  const std::string nan_bias = checkpoint("nan.h5", [](hid_t f) {
    const float values[2] = {NAN, 0.0f};
    H5Dwrite(H5Dopen2(f, "fc2.bias", H5P_DEFAULT), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
  });
  std::string e = error_of([&] { load_model(nan_bias); });
  EXPECT_NE(e.find("tensor 'fc2.bias' holds NaN or inf"), std::string::npos) << e;

  const std::string negative_var = checkpoint("negvar.h5", [](hid_t f) {
    const std::vector<float> values(4, -5.0f);
    H5Dwrite(H5Dopen2(f, "bn1.running_var", H5P_DEFAULT), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
             values.data());
  });
  e = error_of([&] { load_model(negative_var); });
  EXPECT_NE(e.find("'bn1.running_var' holds a negative variance"), std::string::npos) << e;

  const std::string wide = checkpoint("wide.h5", [](hid_t f) {
    H5Ldelete(f, "conv1.weight", H5P_DEFAULT);
    const hsize_t dims[4] = {hsize_t{1} << 40, 1, 7, 7};
    const hsize_t chunk[4] = {1, 1, 7, 7};
    const hid_t space = H5Screate_simple(4, dims, nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 4, chunk);
    H5Dclose(H5Dcreate2(f, "conv1.weight", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5Pclose(dcpl);
    H5Sclose(space);
  });
  e = error_of([&] { load_model(wide); });
  EXPECT_NE(e.find("width (conv1.weight rows) is 1099511627776, outside [1, 1024]"), std::string::npos) << e;

  // A width within the bound that the rest of the file does not have (the fuzzer's find: a model of
  // width 1024 was built, billions of weights, before its tensors were compared).
  const std::string forged_width = checkpoint("forged_width.h5", [](hid_t f) {
    H5Ldelete(f, "conv1.weight", H5P_DEFAULT);
    const hsize_t dims[4] = {1024, 1, 7, 7};
    const hid_t space = H5Screate_simple(4, dims, nullptr);
    H5Dclose(H5Dcreate2(f, "conv1.weight", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Sclose(space);
  });
  e = error_of([&] { load_model(forged_width); });
  EXPECT_NE(e.find("fc1.weight reads"), std::string::npos) << e;
  EXPECT_NE(e.find("stem width 1024"), std::string::npos) << e;
}

TEST_F(HostileFiles, ImageFilesWithForgedShapesOrExternalLinksAreRefused) {
  const std::string forged = path("forged.h5");
  {
    const hid_t f = H5Fcreate(forged.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t dims[4] = {64, (hsize_t{1} << 32) + 1, 16, 16}, chunk[4] = {1, 1, 16, 16}, n = 64;
    const hid_t space = H5Screate_simple(4, dims, nullptr), lspace = H5Screate_simple(1, &n, nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 4, chunk);
    H5Dclose(H5Dcreate2(f, "images", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5Dclose(H5Dcreate2(f, "labels", H5T_NATIVE_INT64, lspace, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Pclose(dcpl), H5Sclose(space), H5Sclose(lspace), H5Fclose(f);
  }
  std::string e = error_of([&] { JetFile file(forged); });
  EXPECT_NE(e.find("/images has 4294967297 channels"), std::string::npos) << e;

  const std::string real = images("real.h5", 16);
  const std::string linked = path("linked.h5");
  {
    const hid_t f = H5Fcreate(linked.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Lcreate_external(real.c_str(), "/images", f, "images", H5P_DEFAULT, H5P_DEFAULT);
    H5Lcreate_external(real.c_str(), "/labels", f, "labels", H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
  }
  e = error_of([&] { JetFile file(linked); });
  EXPECT_NE(e.find("'images' is an external link"), std::string::npos) << e;
}

TEST_F(HostileFiles, ValidationImagesMustMatchTheTrainingImages) {
  TrainConfig c;
  c.train_path = images("train16.h5", 16, 16);
  c.batch_size = 4;
  for (const auto& [name, size] : {std::pair{"val32.h5", 32}, std::pair{"val8.h5", 8}}) {
    c.val_path = images(name, size);
    const std::string e = error_of([&] { open_training_data(c, 16); });
    EXPECT_NE(e.find(name), std::string::npos) << e;
    EXPECT_NE(e.find(fmt::format("holds {}x{}x1 images, but the training file", size, size)), std::string::npos) << e;
  }
  c.val_path = images("val16.h5", 16);
  EXPECT_NO_THROW(open_training_data(c, 16));
}

TEST_F(HostileFiles, FeatureFilesWithBadLabelsAreRefused) {
  const std::string p = path("features.h5");
  {
    AtomicH5File out(p);
    h5_write_tensor(out.id(), "features", Tensor::zeros({3, 4}));
    h5_write_int64(out.id(), "labels", {0, 1, 1000000000000});
    out.commit();
  }
  const std::string e = error_of([&] { read_features(p); });
  EXPECT_NE(e.find("/labels[2] = 1000000000000"), std::string::npos) << e;
}

}  // namespace
}  // namespace toptag
