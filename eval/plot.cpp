#include "eval/plot.h"

#include <fmt/format.h>
#include <gnuplot-iostream.h>

#include <filesystem>

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
  temp.move_to(path);
}

}  // namespace toptag
