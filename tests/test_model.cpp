// ResNet topology, checkpoints, and a small network learning a toy problem.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "io/checkpoint.h"
#include "nn/ops/softmax.h"
#include "testing.h"
#include "training/adam.h"

namespace toptag {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("toptag_test_" + name + "_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

TEST(ResNet, Resnet50HasThePapersParameterCount) {
  ResNet model(ResNetConfig{}, 1);
  EXPECT_EQ(model.state().parameter_count(), 25'601'986);
  EXPECT_EQ(model.feature_dim(), 2048);
  ResNetConfig rgb;
  rgb.in_channels = 3;
  EXPECT_EQ(ResNet(rgb, 1).state().parameter_count(), 25'601'986 + 2 * 64 * 49);
}

TEST(ResNet, TorchvisionStateDictKeys) {
  ResNet model(ResNetConfig{}, 1);
  StateList s = model.state();
  std::vector<std::string> names;
  for (auto& p : s.parameters) names.push_back(p.name);
  for (auto& b : s.buffers) names.push_back(b.name);
  for (const char* key : {"conv1.weight", "bn1.running_var", "layer3.5.conv2.weight", "layer2.0.downsample.0.weight",
                          "layer2.0.downsample.1.bias", "layer4.2.bn3.weight", "fc1.weight", "fc2.bias"})
    EXPECT_NE(std::find(names.begin(), names.end(), key), names.end()) << key;
  EXPECT_EQ(std::find(names.begin(), names.end(), "layer1.1.downsample.0.weight"), names.end());
  EXPECT_EQ(s.parameters.size(), 53u + 2 * 53u + 4u);  // 53 conv weights, 53 BNs (weight, bias), fc1 and fc2
}

TEST(ResNet, ForwardShapesAt40x40AndInference) {
  ResNet model(ResNetConfig{}, 2);
  model.set_training(false);
  NoGradGuard no_grad;
  Var images(Tensor::zeros({2, 1, 40, 40}));
  EXPECT_EQ(model.features(images).shape().str(), "[2, 2048]");
  EXPECT_EQ(model.forward(images).shape().str(), "[2, 2]");
  EXPECT_THROW(model.forward(Var(Tensor::zeros({2, 3, 40, 40}))), Error);
}

TEST(ResNet, SameSeedSameWeights) {
  ResNetConfig small{"resnet10", 1, 8, 16, 2};
  ResNet a(small, 7), b(small, 7), c(small, 8);
  StateList sa = a.state(), sb = b.state(), sc = c.state();
  EXPECT_EQ(sa.parameters[0].var->value().data()[3], sb.parameters[0].var->value().data()[3]);
  EXPECT_NE(sa.parameters[0].var->value().data()[3], sc.parameters[0].var->value().data()[3]);
}

TEST(Checkpoint, RoundTripRestoresEveryTensor) {
  fs::path dir = temp_dir("roundtrip");
  ResNetConfig small{"resnet18", 3, 8, 32, 2};
  ResNet model(small, 3);
  model.state().buffers[0].tensor->fill(0.25f);
  save_model((dir / "m.h5").string(), model);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 1);  // no temporary left

  std::unique_ptr<ResNet> loaded = load_model((dir / "m.h5").string());
  EXPECT_EQ(loaded->config().arch, "resnet18");
  EXPECT_EQ(loaded->config().in_channels, 3);
  EXPECT_EQ(loaded->config().width, 8);
  EXPECT_EQ(loaded->config().hidden, 32);
  StateList want = model.state(), got = loaded->state();
  ASSERT_EQ(want.parameters.size(), got.parameters.size());
  for (size_t i = 0; i < want.parameters.size(); ++i)
    testing::expect_close(got.parameters[i].var->value(), want.parameters[i].var->value(), want.parameters[i].name, 0,
                          0);
  for (size_t i = 0; i < want.buffers.size(); ++i)
    testing::expect_close(*got.buffers[i].tensor, *want.buffers[i].tensor, want.buffers[i].name, 0, 0);
  fs::remove_all(dir);
}

std::string load_error(const std::string& path) {
  try {
    load_model(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Checkpoint, LoadingErrorsNameTheProblem) {
  fs::path dir = temp_dir("errors");
  ResNet model(ResNetConfig{"resnet10", 1, 4, 8, 2}, 3);
  const std::string good = (dir / "good.h5").string();
  save_model(good, model);

  EXPECT_NE(load_error((dir / "absent.h5").string()).find("no such file"), std::string::npos);

  const std::string text = (dir / "text.h5").string();
  std::ofstream(text) << "not hdf5";
  EXPECT_NE(load_error(text).find("not an HDF5 file"), std::string::npos);

  {  // a tensor removed
    H5Id f = h5_open(good, true);
    H5Ldelete(f.get(), "layer1.0.bn2.running_mean", H5P_DEFAULT);
  }
  std::string e = load_error(good);
  EXPECT_NE(e.find("'layer1.0.bn2.running_mean' is missing"), std::string::npos) << e;

  save_model(good, model);
  {  // a tensor of the wrong shape
    H5Id f = h5_open(good, true);
    h5_write_tensor(f.get(), "layer2.0.downsample.0.weight", Tensor::zeros({8, 4, 3, 3}));
  }
  e = load_error(good);
  EXPECT_NE(e.find("'layer2.0.downsample.0.weight' has shape [8, 4, 3, 3], expected [8, 4, 1, 1]"), std::string::npos)
      << e;

  save_model(good, model);
  {  // an unknown architecture
    H5Id f = h5_open(good, true);
    h5_set_attr(f.get(), "arch", std::string("vgg16"));
  }
  EXPECT_NE(load_error(good).find("unknown architecture 'vgg16'"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Checkpoint, PlainStateDictWithOnlyArchLoads) {
  // What a PyTorch user exports with h5py: the tensors and "arch", nothing of toptag's.
  fs::path dir = temp_dir("plain");
  ResNet model(ResNetConfig{"resnet10", 2, 4, 8, 2}, 5);
  const std::string path = (dir / "torch.h5").string();
  {
    H5Id f = h5_create(path);
    StateList s = model.state();
    for (auto& p : s.parameters) h5_write_tensor(f.get(), p.name, p.var->value());
    for (auto& b : s.buffers) h5_write_tensor(f.get(), b.name, *b.tensor);
    h5_set_attr(f.get(), "arch", std::string("resnet10"));
  }
  std::unique_ptr<ResNet> loaded = load_model(path);
  EXPECT_EQ(loaded->config().in_channels, 2);
  fs::remove_all(dir);
}

TEST(Training, SmallNetworkLearnsASeparableToyProblem) {
  // Class 1 images have a bright blob in the top-left quadrant, class 0 in the bottom-right.
  Rng rng(9);
  const int64_t N = 32, H = 12;
  auto make_batch = [&](std::vector<int64_t>& labels) {
    Tensor x = testing::random_tensor({N, 1, H, H}, rng, 0.3);
    labels.resize(N);
    for (int64_t n = 0; n < N; ++n) {
      labels[n] = static_cast<int64_t>(rng.below(2));
      const int64_t off = labels[n] ? 1 : H / 2 + 1;
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < 4; ++j) x.data()[n * H * H + (off + i) * H + off + j] += 2.0f;
    }
    return x;
  };
  ResNet model(ResNetConfig{"resnet10", 1, 8, 32, 2}, 1);
  StateList state = model.state();
  Adam adam(state.parameters, AdamOptions{});
  std::vector<int64_t> labels;
  float first_loss = 0, last_loss = 0;
  for (int step = 0; step < 40; ++step) {
    Var images(make_batch(labels));
    Var loss = softmax_cross_entropy(model.forward(images), labels);
    if (step == 0) first_loss = loss.value().data()[0];
    last_loss = loss.value().data()[0];
    adam.zero_grad();
    backward(loss);
    adam.step();
  }
  EXPECT_LT(last_loss, first_loss * 0.5f);

  model.set_training(false);
  NoGradGuard no_grad;
  Var test_images(make_batch(labels));
  Var probs = softmax(model.forward(test_images));
  int correct = 0;
  for (int64_t n = 0; n < N; ++n) correct += (probs.value().data()[n * 2 + 1] > 0.5f) == (labels[n] == 1);
  EXPECT_GT(correct, N * 9 / 10);
}

}  // namespace
}  // namespace toptag
