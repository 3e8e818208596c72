// Loss curves as a self-contained SVG: linear axes with "nice" tick values
// (1, 2, 5 x 10^k), grid, title, axis labels "step" and "loss", one polyline
// per series and a legend. No dependencies; open the file in any browser.
#pragma once
#include <string>
#include <vector>

namespace tessera::train {

struct Series {
  std::string name;
  std::vector<double> x, y;  // same length; points with a non-finite x or y are skipped
  std::string color;         // any SVG color ("#1f77b4", "red"); "" = next of a 10-color palette
};

// Tick values covering [lo, hi] with about `target` ticks spaced by 1, 2 or 5 x 10^k;
// the first tick is <= lo and the last >= hi. A zero or non-finite range is widened.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

// The SVG text (starts with "<svg", ends with "</svg>\n"). Series without finite
// points get a legend entry and no polyline; no data at all gives empty axes
// marked "no data". Throws Error naming the series when x and y lengths differ.
// x_label / y_label name the axes.
std::string loss_svg(const std::vector<Series>& series, const std::string& title, const std::string& x_label = "step",
                     const std::string& y_label = "loss");

// Writes loss_svg() to path through AtomicFileWriter (temporary + rename);
// throws Error naming the path when it cannot be written.
void write_loss_svg(const std::string& path, const std::vector<Series>& series, const std::string& title,
                    const std::string& x_label = "step", const std::string& y_label = "loss");

}  // namespace tessera::train
