// The image options shared by every command that turns jets into images.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>

#include "data/dataset.h"
#include "tagger/tagger.h"

namespace toptag::apps {

struct ImageArgs {
  ImageOptions options;
  bool no_center = false, no_rotate = false, no_flip = false, no_normalize = false;
  CLI::Option* size_option = nullptr;
  CLI::Option* channels_option = nullptr;
  CLI::Option* extent_option = nullptr;
  CLI::Option* step_options[4] = {};  // --no-center, --no-rotate, --no-flip, --no-normalize

  void add_to(CLI::App& command);
  // The options given on the command line; any option not given comes from `model` (the image
  // options a checkpoint was trained with: Tagger::images), so a model is fed images as it was trained.
  ImageOptions merged(const std::optional<ImageOptions>& model = std::nullopt) const;
  // The same for `file` (cached image files impose their own size and channels).
  ImageOptions resolve(const JetFile& file, const std::optional<ImageOptions>& model = std::nullopt) const;
  // For a tagger: its stored options as above; for a checkpoint that stores none (weights trained
  // elsewhere), the flags as given, with the model's own channel count unless --channels says otherwise.
  ImageOptions merged(const Tagger& tagger) const;
  ImageOptions resolve(const JetFile& file, const Tagger& tagger) const;
};

// --key NAME: the pandas object of a jet file holding several (data/pandas_frame.h).
void add_key_option(CLI::App& command, std::string& key);

}  // namespace toptag::apps
