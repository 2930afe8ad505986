// Text files written whole and atomically: under a temporary name, then renamed into place, so an
// interrupted write never leaves a truncated file (HDF5 files have AtomicH5File in io/h5.h).
#pragma once

#include <string>

namespace toptag {

// Throws toptag::Error naming `path` if it cannot be written.
void write_text_atomically(const std::string& path, const std::string& text);

}  // namespace toptag
