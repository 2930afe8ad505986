// The image options shared by every command that turns jets into images.
#pragma once

#include <CLI/CLI.hpp>

#include "data/dataset.h"

namespace toptag::apps {

struct ImageArgs {
  ImageOptions options;
  bool no_center = false, no_rotate = false, no_flip = false, no_normalize = false;
  CLI::Option* size_option = nullptr;
  CLI::Option* channels_option = nullptr;

  void add_to(CLI::App& command);
  // The options to use for `file` (cached image files impose their own size and channels).
  ImageOptions resolve(const JetFile& file) const;
};

}  // namespace toptag::apps
