#include "apps/image_options.h"

#include <fmt/format.h>

#include "apps/commands.h"
#include "nn/check.h"

namespace toptag::apps {

namespace {

bool given(const CLI::Option* option) {
  return option && option->count() > 0;
}

}  // namespace

void ImageArgs::add_to(CLI::App& cmd) {
  size_option = cmd.add_option("--image-size", options.size, "image pixels per side (224: the paper's input)")
                    ->default_val(40)
                    ->check(in_range(4, 1024));
  channels_option = cmd.add_option("--channels", options.channels, "image channels: 1, or 3 copies as the paper")
                        ->default_val(1)
                        ->check(in_range(1, 4));
  extent_option = cmd.add_option("--extent", options.extent, "half-width of the image window in eta and phi")
                      ->default_val(0.8)
                      ->check(in_range(1e-6, 3.2));
  step_options[0] = cmd.add_flag("--no-center", no_center, "do not centre on the pT-weighted centroid");
  step_options[1] = cmd.add_flag("--no-rotate", no_rotate, "do not rotate the principal axis to vertical");
  step_options[2] = cmd.add_flag("--no-flip", no_flip, "do not flip the brightest half into a fixed quadrant");
  step_options[3] =
      cmd.add_flag("--no-normalize", no_normalize, "keep pixel values in GeV instead of unit total intensity");
}

void add_key_option(CLI::App& cmd, std::string& key) {
  cmd.add_option("--key", key, "the pandas key of the jets in a file holding several (default: the only one)");
}

ImageOptions ImageArgs::merged(const std::optional<ImageOptions>& model) const {
  ImageOptions o = options;
  o.center = !no_center, o.rotate = !no_rotate, o.flip = !no_flip, o.normalize = !no_normalize;
  if (!model) return o;
  // A model scores only images made as it was trained on: a flag may repeat the checkpoint's
  // value, never change it.
  auto refuse = [](const CLI::Option* flag, const std::string& asked, const std::string& stored) {
    fail("{} {} differs from the checkpoint's {}: a model scores only images made as in its training", flag->get_name(),
         asked, stored);
  };
  if (given(size_option) && o.size != model->size)
    refuse(size_option, std::to_string(o.size), std::to_string(model->size));
  if (given(channels_option) && o.channels != model->channels)
    refuse(channels_option, std::to_string(o.channels), std::to_string(model->channels));
  if (given(extent_option) && o.extent != model->extent)
    refuse(extent_option, fmt::format("{:g}", o.extent), fmt::format("{:g}", model->extent));
  const bool steps[4] = {model->center, model->rotate, model->flip, model->normalize};
  for (int i = 0; i < 4; ++i)
    if (given(step_options[i]) && steps[i]) refuse(step_options[i], "", "preprocessing, which has that step");
  return *model;
}

ImageOptions ImageArgs::merged(const Tagger& tagger) const {
  if (tagger.images_stored) return merged(tagger.images);
  ImageOptions o = merged(std::nullopt);
  if (!given(channels_option)) o.channels = tagger.images.channels;
  return o;
}

ImageOptions ImageArgs::resolve(const JetFile& file, const Tagger& tagger) const {
  if (tagger.images_stored) return resolve(file, tagger.images);
  return file.image_options(merged(tagger), given(size_option), given(channels_option));
}

ImageOptions ImageArgs::resolve(const JetFile& file, const std::optional<ImageOptions>& model) const {
  if (!model) return file.image_options(merged(model), given(size_option), given(channels_option));
  const ImageOptions o = merged(model);
  file.check_images_match(o, "the checkpoint");
  return o;
}

}  // namespace toptag::apps
