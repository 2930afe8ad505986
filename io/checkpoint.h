// Model checkpoints in HDF5, readable by h5py and PyTorch users without toptag:
//  - every parameter and buffer is a float32 dataset at the root, named by its torchvision
//    state_dict key ("conv1.weight", "layer2.0.downsample.1.running_var", "fc2.bias"), in PyTorch
//    layout (OIHW convs, [out, in] linear);
//  - root attribute "arch" (e.g. "resnet50"); "toptag_format" is the format version;
//    "folded_batchnorm" = 1 marks a model whose batch norms were folded into conv biases;
//  - the model's sizes (input channels, stem width, hidden width, classes) are read off the shapes,
//    so a file holding only the tensors and "arch" (an export from PyTorch) loads as it is;
//  - other components (optimizer state, training progress, run configuration) live in groups of
//    their own, written by the code that owns them.
// Writes are atomic: everything goes to a temporary file that is renamed over the target at the end.
#pragma once

#include <memory>
#include <string>

#include "io/h5.h"
#include "nn/resnet.h"

namespace toptag {

constexpr int64_t kCheckpointFormat = 1;

// Writes the model's tensors and the root attributes into an open file.
void write_model_state(hid_t file, ResNet& model);
// Atomically writes a checkpoint holding only the model.
void save_model(const std::string& path, ResNet& model);

// The architecture and sizes of the model stored in a checkpoint.
ResNetConfig read_model_config(hid_t file, const std::string& path);
// Copies every tensor of `model` from the file. A missing tensor or a wrong shape is an error
// naming the tensor and both shapes; the model is left unchanged on error.
void read_model_state(hid_t file, const std::string& path, ResNet& model);
// Builds the model a checkpoint describes and loads its weights (batch norms folded if the file says so).
std::unique_ptr<ResNet> load_model(hid_t file, const std::string& path);
std::unique_ptr<ResNet> load_model(const std::string& path);

}  // namespace toptag
