// ResNet::walk, the one description of the topology that forward, state, folding, convs() and the
// ONNX exporter follow: its steps, their names and flags, and the state_dict names and order that
// checkpoints depend on, against expectations written out here (not derived from walk()).
#include <fmt/format.h>

#include <iterator>
#include <map>
#include <sstream>
#include <utility>

#include "nn/resnet.h"
#include "testing.h"

namespace toptag {
namespace {

using Kind = LayerStep::Kind;

// A step as the test expects it: kind, name, bn_name (conv only), shortcut, relu.
struct Expected {
  Kind kind;
  std::string name{}, bn_name{};
  bool shortcut = false, relu = false;
};

std::vector<LayerStep> steps_of(ResNet& model) {
  std::vector<LayerStep> steps;
  model.walk([&](const LayerStep& step) { steps.push_back(step); });
  return steps;
}

std::string describe(Kind kind, const std::string& name, const std::string& bn_name, bool shortcut, bool relu) {
  static const std::map<Kind, const char*> kinds = {{Kind::conv, "conv"},           {Kind::max_pool, "max_pool"},
                                                    {Kind::block_begin, "begin"},   {Kind::block_end, "end"},
                                                    {Kind::global_avg_pool, "gap"}, {Kind::linear, "linear"}};
  return fmt::format("{} {} {}{}{}", kinds.at(kind), name, bn_name, shortcut ? " shortcut" : "", relu ? " relu" : "");
}

void expect_steps(const std::vector<LayerStep>& got, const std::vector<Expected>& want) {
  std::vector<std::string> g, w;
  for (const LayerStep& s : got) g.push_back(describe(s.kind, s.name, s.bn_name, s.shortcut, s.relu));
  for (const Expected& s : want) w.push_back(describe(s.kind, s.name, s.bn_name, s.shortcut, s.relu));
  EXPECT_EQ(g, w);
}

// The torchvision layout written out independently of nn/resnet.cpp: the stem, then per block its
// main-path convs, the shortcut conv on the first block of a stage that changes shape, the residual
// add and ReLU, then the pool and the classifier head.
std::vector<Expected> torchvision_steps(const std::vector<int>& blocks, bool bottleneck, bool first_stage_shortcut) {
  std::vector<Expected> out = {{Kind::conv, "conv1", "bn1", false, true}, {Kind::max_pool, "maxpool"}};
  for (size_t s = 0; s < blocks.size(); ++s)
    for (int b = 0; b < blocks[s]; ++b) {
      const std::string block = fmt::format("layer{}.{}", s + 1, b);
      out.push_back({Kind::block_begin, block});
      out.push_back({Kind::conv, block + ".conv1", block + ".bn1", false, true});
      out.push_back({Kind::conv, block + ".conv2", block + ".bn2", false, bottleneck});
      if (bottleneck) out.push_back({Kind::conv, block + ".conv3", block + ".bn3", false, false});
      if (b == 0 && (s > 0 || first_stage_shortcut))
        out.push_back({Kind::conv, block + ".downsample.0", block + ".downsample.1", true, false});
      out.push_back({Kind::block_end, block, "", false, true});
    }
  out.push_back({Kind::global_avg_pool, "avgpool"});
  out.push_back({Kind::linear, "fc1", "", false, true});
  out.push_back({Kind::linear, "fc2", "", false, false});
  return out;
}

// "a b\n c" -> {"a", "b", "c"}: the expected names, written as a table.
std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  return {std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
}

std::map<Kind, int> kind_counts(const std::vector<LayerStep>& steps) {
  std::map<Kind, int> n;
  for (const LayerStep& s : steps) ++n[s.kind];
  return n;
}

// What every step of any walk must satisfy: the pointers its kind needs, a bn_name that names the
// conv's own batch norm, and a block_end closing the block its block_begin opened.
void expect_well_formed(const std::vector<LayerStep>& steps) {
  Block* open = nullptr;
  for (const LayerStep& s : steps) {
    SCOPED_TRACE(s.name);
    EXPECT_EQ(s.conv != nullptr, s.kind == Kind::conv);
    EXPECT_EQ(s.bn != nullptr, s.kind == Kind::conv);
    EXPECT_EQ(s.linear != nullptr, s.kind == Kind::linear);
    EXPECT_EQ(s.block != nullptr, s.kind == Kind::block_begin || s.kind == Kind::block_end);
    EXPECT_EQ(s.shortcut, s.name.ends_with(".downsample.0"));
    if (s.kind == Kind::conv) {
      const std::string bn = s.shortcut ? s.name.substr(0, s.name.size() - 1) + "1"
                                        : s.name.substr(0, s.name.rfind("conv")) + "bn" + s.name.back();
      EXPECT_EQ(s.bn_name, bn);
    } else {
      EXPECT_EQ(s.bn_name, "");
    }
    if (s.kind == Kind::block_begin) {
      EXPECT_EQ(open, nullptr);
      open = s.block;
    }
    if (s.kind == Kind::block_end) {
      EXPECT_EQ(s.block, open);
      open = nullptr;
    }
    if (s.kind == Kind::max_pool) {
      EXPECT_EQ(s.pool.kernel, 3);
      EXPECT_EQ(s.pool.stride, 2);
      EXPECT_EQ(s.pool.padding, 1);
    }
  }
}

TEST(ResNetWalk, Resnet50Steps) {
  ResNet model(ResNetConfig{}, 1);
  const std::vector<LayerStep> steps = steps_of(model);
  expect_steps(steps, torchvision_steps({3, 4, 6, 3}, true, true));
  expect_well_formed(steps);
  const std::map<Kind, int> want = {{Kind::conv, 53},      {Kind::max_pool, 1},        {Kind::block_begin, 16},
                                    {Kind::block_end, 16}, {Kind::global_avg_pool, 1}, {Kind::linear, 2}};
  EXPECT_EQ(kind_counts(steps), want);
}

TEST(ResNetWalk, Resnet18StepsAndTheConstWalkAgree) {
  ResNet model(ResNetConfig{"resnet18", 1, 8, 16, 2}, 1);
  const std::vector<LayerStep> steps = steps_of(model);
  expect_steps(steps, torchvision_steps({2, 2, 2, 2}, false, false));  // layer1 keeps the stem's width
  expect_well_formed(steps);
  const std::map<Kind, int> want = {{Kind::conv, 20},     {Kind::max_pool, 1},        {Kind::block_begin, 8},
                                    {Kind::block_end, 8}, {Kind::global_avg_pool, 1}, {Kind::linear, 2}};
  EXPECT_EQ(kind_counts(steps), want);

  std::vector<LayerStep> read_only;
  std::as_const(model).walk([&](const LayerStep& step) { read_only.push_back(step); });
  ASSERT_EQ(read_only.size(), steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(read_only[i].name, steps[i].name);
    EXPECT_EQ(read_only[i].conv, steps[i].conv);
    EXPECT_EQ(read_only[i].linear, steps[i].linear);
  }
}

// Checkpoints, the Adam state and the PyTorch goldens are keyed by these names. The order is kept too
// (torchvision's state_dict order, as state() always listed them): the gradient reducer buckets the
// parameters in reverse of it, so that buckets fill in the order backward produces the gradients.
TEST(ResNetWalk, Resnet10StateNamesInOrder) {
  ResNet model(ResNetConfig{"resnet10", 1, 8, 16, 2}, 1);
  StateList s = model.state();
  std::vector<std::string> parameters, buffers;
  for (const auto& p : s.parameters) parameters.push_back(p.name);
  for (const auto& b : s.buffers) buffers.push_back(b.name);
  const std::vector<std::string> want_parameters = words(R"(
      conv1.weight bn1.weight bn1.bias
      layer1.0.conv1.weight layer1.0.bn1.weight layer1.0.bn1.bias
      layer1.0.conv2.weight layer1.0.bn2.weight layer1.0.bn2.bias
      layer2.0.conv1.weight layer2.0.bn1.weight layer2.0.bn1.bias
      layer2.0.conv2.weight layer2.0.bn2.weight layer2.0.bn2.bias
      layer2.0.downsample.0.weight layer2.0.downsample.1.weight layer2.0.downsample.1.bias
      layer3.0.conv1.weight layer3.0.bn1.weight layer3.0.bn1.bias
      layer3.0.conv2.weight layer3.0.bn2.weight layer3.0.bn2.bias
      layer3.0.downsample.0.weight layer3.0.downsample.1.weight layer3.0.downsample.1.bias
      layer4.0.conv1.weight layer4.0.bn1.weight layer4.0.bn1.bias
      layer4.0.conv2.weight layer4.0.bn2.weight layer4.0.bn2.bias
      layer4.0.downsample.0.weight layer4.0.downsample.1.weight layer4.0.downsample.1.bias
      fc1.weight fc1.bias fc2.weight fc2.bias)");
  const std::vector<std::string> want_buffers = words(R"(
      bn1.running_mean bn1.running_var
      layer1.0.bn1.running_mean layer1.0.bn1.running_var layer1.0.bn2.running_mean layer1.0.bn2.running_var
      layer2.0.bn1.running_mean layer2.0.bn1.running_var layer2.0.bn2.running_mean layer2.0.bn2.running_var
      layer2.0.downsample.1.running_mean layer2.0.downsample.1.running_var
      layer3.0.bn1.running_mean layer3.0.bn1.running_var layer3.0.bn2.running_mean layer3.0.bn2.running_var
      layer3.0.downsample.1.running_mean layer3.0.downsample.1.running_var
      layer4.0.bn1.running_mean layer4.0.bn1.running_var layer4.0.bn2.running_mean layer4.0.bn2.running_var
      layer4.0.downsample.1.running_mean layer4.0.downsample.1.running_var)");
  EXPECT_EQ(parameters, want_parameters);
  EXPECT_EQ(buffers, want_buffers);

  std::vector<std::string> head;
  for (const auto& p : model.head_state().parameters) head.push_back(p.name);
  EXPECT_EQ(head, (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}));

  std::vector<std::string> convs, linears;
  for (const auto& [name, conv] : model.convs()) convs.push_back(name);
  for (const auto& [name, linear] : model.linears()) linears.push_back(name);
  EXPECT_EQ(convs, words(R"(conv1 layer1.0.conv1 layer1.0.conv2
      layer2.0.conv1 layer2.0.conv2 layer2.0.downsample.0 layer3.0.conv1 layer3.0.conv2 layer3.0.downsample.0
      layer4.0.conv1 layer4.0.conv2 layer4.0.downsample.0)"));
  EXPECT_EQ(linears, (std::vector<std::string>{"fc1", "fc2"}));

  // Folded: each conv gains a bias right after its weight, and no batch-norm tensor is left.
  model.set_training(false);
  model.fold_batchnorm();
  StateList folded = model.state();
  std::vector<std::string> folded_names;
  for (const auto& p : folded.parameters) folded_names.push_back(p.name);
  std::vector<std::string> want_folded;
  for (const std::string& conv : convs) {
    want_folded.push_back(conv + ".weight");
    want_folded.push_back(conv + ".bias");
  }
  for (const char* name : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) want_folded.push_back(name);
  EXPECT_EQ(folded_names, want_folded);
  EXPECT_TRUE(folded.buffers.empty());
}

// set_training reaches every batch norm the walk lists, and only the walk's steps carry one.
TEST(ResNetWalk, SetTrainingReachesEveryBatchNorm) {
  ResNet model(ResNetConfig{"resnet18", 1, 8, 16, 2}, 1);
  model.set_training(false);
  int batch_norms = 0;
  model.walk([&](const LayerStep& step) {
    if (step.kind != Kind::conv) return;
    EXPECT_FALSE(step.bn->training) << step.bn_name;
    ++batch_norms;
  });
  EXPECT_EQ(batch_norms, 20);
  model.set_training(true);
  model.walk([&](const LayerStep& step) {
    if (step.kind == Kind::conv) {
      EXPECT_TRUE(step.bn->training) << step.bn_name;
    }
  });
}

}  // namespace
}  // namespace toptag
