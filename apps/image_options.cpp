#include "apps/image_options.h"

namespace toptag::apps {

void ImageArgs::add_to(CLI::App& cmd) {
  size_option =
      cmd.add_option("--image-size", options.size, "image pixels per side (224: the paper's input)")->default_val(40);
  channels_option =
      cmd.add_option("--channels", options.channels, "image channels: 1, or 3 copies as the paper")->default_val(1);
  extent_option =
      cmd.add_option("--extent", options.extent, "half-width of the image window in eta and phi")->default_val(0.8);
  step_options[0] = cmd.add_flag("--no-center", no_center, "do not centre on the pT-weighted centroid");
  step_options[1] = cmd.add_flag("--no-rotate", no_rotate, "do not rotate the principal axis to vertical");
  step_options[2] = cmd.add_flag("--no-flip", no_flip, "do not flip the brightest half into a fixed quadrant");
  step_options[3] =
      cmd.add_flag("--no-normalize", no_normalize, "keep pixel values in GeV instead of unit total intensity");
}

ImageOptions ImageArgs::merged(const std::optional<ImageOptions>& model) const {
  auto given = [](const CLI::Option* o) { return o && o->count() > 0; };
  ImageOptions o = options;
  o.center = !no_center, o.rotate = !no_rotate, o.flip = !no_flip, o.normalize = !no_normalize;
  if (!model) return o;
  if (!given(size_option)) o.size = model->size;
  if (!given(channels_option)) o.channels = model->channels;
  if (!given(extent_option)) o.extent = model->extent;
  if (!given(step_options[0])) o.center = model->center;
  if (!given(step_options[1])) o.rotate = model->rotate;
  if (!given(step_options[2])) o.flip = model->flip;
  if (!given(step_options[3])) o.normalize = model->normalize;
  return o;
}

ImageOptions ImageArgs::resolve(const JetFile& file, const std::optional<ImageOptions>& model) const {
  auto given = [](const CLI::Option* o) { return o && o->count() > 0; };
  return file.image_options(merged(model), given(size_option), given(channels_option));
}

}  // namespace toptag::apps
