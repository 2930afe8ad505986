#include "io/files.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "nn/check.h"

namespace toptag {

void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary);
    if (!out) fail("{}: cannot write", path);
    out << text;
    out.close();
    if (!out) {
      std::remove(temp.c_str());
      fail("{}: write failed (disk full?)", path);
    }
  }
  std::error_code e;
  std::filesystem::rename(temp, path, e);
  if (e) {
    std::remove(temp.c_str());  // e.g. `path` is a directory: leave nothing behind
    fail("{}: cannot move the finished file into place: {}", path, e.message());
  }
}

void refuse_overwriting_input(const std::string& flag, const std::string& output,
                              const std::vector<std::string>& inputs) {
  std::error_code ec;
  for (const std::string& input : inputs)
    if (!input.empty() && !output.empty() && std::filesystem::equivalent(output, input, ec))
      fail("{} {} is the input {}: writing it would destroy the input", flag, output, input);
}

}  // namespace toptag
