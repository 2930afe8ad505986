#include "eval/plot.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gnuplot-iostream.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/files.h"
#include "nn/check.h"

namespace toptag {

std::string gnuplot_data(const XY& points) {
  std::string out;
  for (const auto& [x, y] : points) out += fmt::format("{:.9g} {:.9g}\n", x, y);
  return out + "e\n";
}

std::string gnuplot_string(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'')
      out += "''";
    else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      out += ' ';
    else
      out += c;
  }
  return out + "'";
}

namespace {

// Whether a finished plot file ends as its format's files do: PNG's IEND chunk, SVG's closing tag,
// PDF's end-of-file marker, within its last kilobyte.
bool ends_complete(const std::string& path, const std::string& ext) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff from = std::max<std::streamoff>(0, size - 1024);
  in.seekg(from);
  std::string tail(static_cast<size_t>(size - from), '\0');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  const char* mark = ext == ".png" ? "IEND" : ext == ".svg" ? "</svg>" : "%%EOF";
  return in && tail.find(mark) != std::string::npos;
}

}  // namespace

void render_plot(const std::string& path, int width, int height, const std::string& script) {
  const std::string ext = std::filesystem::path(path).extension().string();
  std::string terminal;
  if (ext == ".png")
    terminal = fmt::format("pngcairo size {},{} enhanced font 'sans,11'", width, height);
  else if (ext == ".svg")
    terminal = fmt::format("svg size {},{} enhanced", width, height);
  else if (ext == ".pdf")
    terminal = fmt::format("pdfcairo size {:.2f}in,{:.2f}in enhanced", width / 150.0, height / 150.0);
  else
    fail("{}: plot format must be .png, .svg or .pdf", path);
  TempFile temp(path, ext);  // gnuplot picks the terminal's format by itself; the extension is for people
  {
    Gnuplot gp("gnuplot");
    gp << "set terminal " << terminal << "\nset output " << gnuplot_string(temp.path()) << "\n" << script << "\n";
  }  // closing the pipe waits for gnuplot to finish
  if (std::filesystem::file_size(temp.path()) == 0)
    fail("{}: gnuplot produced no plot (is gnuplot installed, Debian: gnuplot-nox? is the disk full?)", path);
  // gnuplot's own write errors do not reach us through the pipe: a plot cut short (a full disk) is
  // recognised by its missing end, then synced like every other output.
  if (!ends_complete(temp.path(), ext)) fail("{}: gnuplot's plot is cut short (disk full?)", path);
  const int fd = ::open(temp.path().c_str(), O_RDONLY | O_CLOEXEC);
  const bool synced = fd >= 0 && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  if (!synced) fail("{}: cannot write: {}", path, std::strerror(errno));
  temp.move_to(path);
}

}  // namespace toptag
