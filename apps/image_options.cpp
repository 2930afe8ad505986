#include "apps/image_options.h"

namespace toptag::apps {

void ImageArgs::add_to(CLI::App& cmd) {
  size_option = cmd.add_option("--image-size", options.size, "image pixels per side (224: the paper's input)")
                    ->default_val(40);
  channels_option =
      cmd.add_option("--channels", options.channels, "image channels: 1, or 3 copies as the paper")->default_val(1);
  cmd.add_option("--extent", options.extent, "half-width of the image window in eta and phi")->default_val(0.8);
  cmd.add_flag("--no-center", no_center, "do not centre on the pT-weighted centroid");
  cmd.add_flag("--no-rotate", no_rotate, "do not rotate the principal axis to vertical");
  cmd.add_flag("--no-flip", no_flip, "do not flip the brightest half into a fixed quadrant");
  cmd.add_flag("--no-normalize", no_normalize, "keep pixel values in GeV instead of unit total intensity");
}

ImageOptions ImageArgs::resolve(const JetFile& file) const {
  ImageOptions o = options;
  o.center = !no_center, o.rotate = !no_rotate, o.flip = !no_flip, o.normalize = !no_normalize;
  return file.image_options(o, size_option && size_option->count() > 0, channels_option && channels_option->count() > 0);
}

}  // namespace toptag::apps
