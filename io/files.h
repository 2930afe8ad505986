// Text files written whole and atomically: under a temporary name, then renamed into place, so an
// interrupted write never leaves a truncated file (HDF5 files have AtomicH5File in io/h5.h).
#pragma once

#include <string>
#include <vector>

namespace toptag {

// Throws toptag::Error naming `path` if it cannot be written.
void write_text_atomically(const std::string& path, const std::string& text);

// Throws toptag::Error naming both if the output `flag` = `output` is one of `inputs` (the same file,
// through any path or link): writing it would destroy that input.
void refuse_overwriting_input(const std::string& flag, const std::string& output,
                              const std::vector<std::string>& inputs);

}  // namespace toptag
