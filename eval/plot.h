// Plots drawn by gnuplot (through gnuplot-iostream): a caller writes the plot commands with inline
// data blocks, render_plot adds the terminal for the file's extension and writes the file atomically.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace toptag {

using XY = std::vector<std::pair<double, double>>;

// An inline data block for a `'-'` plot source: one "x y" line per point, then "e".
std::string gnuplot_data(const XY& points);

// `text` as a gnuplot single-quoted string: quotes doubled, control characters (a newline would end
// the command and start another, e.g. system(...)) replaced by spaces. Every title, name and path
// that reaches a script goes through it.
std::string gnuplot_string(std::string_view text);

// Runs `script` through gnuplot into `path` (.png, .svg or .pdf, `width` x `height` pixels), under a
// temporary name renamed into place. Throws naming the file if gnuplot is missing or draws nothing.
void render_plot(const std::string& path, int width, int height, const std::string& script);

}  // namespace toptag
