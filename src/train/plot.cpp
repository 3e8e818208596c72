#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"
#include "core/mmap.h"

namespace tessera::train {

namespace {

// Canvas in SVG user units (pixels): the plot box sits inside the margins.
constexpr double kWidth = 800, kHeight = 500;
constexpr double kLeft = 72, kRight = 24, kTop = 44, kBottom = 56;

const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

// Tick label with as many decimals as the step needs (step 0.05 -> "1.25").
std::string tick_label(double v, double step) {
  if (std::fabs(v) < step * 1e-9) v = 0;  // no "-0.00"
  if (step >= 1e5 || step < 1e-4) return fmt("%g", v);
  const int decimals = std::max(0, int(std::ceil(-std::log10(step) - 1e-9)));
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
  bool empty() const { return !(lo <= hi); }
};

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo <= 0) {  // one value: widen by 10% of it (or 1 around 0)
    const double w = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= w, hi += w;
  }
  target = std::max(target, 2);
  const double raw = (hi - lo) / (target - 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  const double step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  const double first = std::floor(lo / step + 1e-9) * step, last = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> t;
  for (int i = 0;; ++i) {
    const double v = first + i * step;  // multiply, not accumulate: no drift
    t.push_back(v);
    if (v >= last - step * 1e-9 || i > 1000) break;
  }
  return t;
}

std::string loss_svg(const std::vector<Series>& series, const std::string& title, const std::string& x_label,
                     const std::string& y_label) {
  Range xr, yr;
  for (const Series& s : series) {
    if (s.x.size() != s.y.size())
      fail("plot series '", s.name, "': ", s.x.size(), " x values but ", s.y.size(), " y values");
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) xr.add(s.x[i]), yr.add(s.y[i]);
  }
  const bool no_data = xr.empty();
  const std::vector<double> xt = no_data ? nice_ticks(0, 1) : nice_ticks(xr.lo, xr.hi, 8);
  const std::vector<double> yt = no_data ? nice_ticks(0, 1) : nice_ticks(yr.lo, yr.hi, 6);
  const double x0 = xt.front(), x1 = xt.back(), y0 = yt.front(), y1 = yt.back();
  const double pw = kWidth - kLeft - kRight, ph = kHeight - kTop - kBottom;  // plot box (px)
  auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return kTop + ph - (y - y0) / (y1 - y0) * ph; };  // SVG y grows downward

  std::string o;
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"500\" viewBox=\"0 0 800 500\" "
       "font-family=\"sans-serif\" font-size=\"12\">\n";
  o += "<rect width=\"800\" height=\"500\" fill=\"white\"/>\n";
  o += "<text x=\"" + fmt("%.1f", kLeft + pw / 2) + "\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">" +
       escape(title) + "</text>\n";
  o += "<clipPath id=\"plot-area\"><rect x=\"" + fmt("%.1f", kLeft) + "\" y=\"" + fmt("%.1f", kTop) +
       "\" width=\"" + fmt("%.1f", pw) + "\" height=\"" + fmt("%.1f", ph) + "\"/></clipPath>\n";

  // Grid, ticks and tick labels.
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1, ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
  o += "<g stroke=\"#e0e0e0\" stroke-width=\"1\">\n";
  for (double v : xt)
    o += "<line x1=\"" + fmt("%.2f", px(v)) + "\" y1=\"" + fmt("%.2f", kTop) + "\" x2=\"" + fmt("%.2f", px(v)) +
         "\" y2=\"" + fmt("%.2f", kTop + ph) + "\"/>\n";
  for (double v : yt)
    o += "<line x1=\"" + fmt("%.2f", kLeft) + "\" y1=\"" + fmt("%.2f", py(v)) + "\" x2=\"" +
         fmt("%.2f", kLeft + pw) + "\" y2=\"" + fmt("%.2f", py(v)) + "\"/>\n";
  o += "</g>\n<g stroke=\"black\" stroke-width=\"1\">\n";
  for (double v : xt)
    o += "<line x1=\"" + fmt("%.2f", px(v)) + "\" y1=\"" + fmt("%.2f", kTop + ph) + "\" x2=\"" +
         fmt("%.2f", px(v)) + "\" y2=\"" + fmt("%.2f", kTop + ph + 5) + "\"/>\n";
  for (double v : yt)
    o += "<line x1=\"" + fmt("%.2f", kLeft - 5) + "\" y1=\"" + fmt("%.2f", py(v)) + "\" x2=\"" +
         fmt("%.2f", kLeft) + "\" y2=\"" + fmt("%.2f", py(v)) + "\"/>\n";
  o += "</g>\n<g fill=\"black\">\n";
  for (double v : xt)
    o += "<text x=\"" + fmt("%.2f", px(v)) + "\" y=\"" + fmt("%.2f", kTop + ph + 19) +
         "\" text-anchor=\"middle\">" + tick_label(v, xstep) + "</text>\n";
  for (double v : yt)
    o += "<text x=\"" + fmt("%.2f", kLeft - 8) + "\" y=\"" + fmt("%.2f", py(v) + 4) + "\" text-anchor=\"end\">" +
         tick_label(v, ystep) + "</text>\n";
  o += "</g>\n";
  o += "<rect x=\"" + fmt("%.1f", kLeft) + "\" y=\"" + fmt("%.1f", kTop) + "\" width=\"" + fmt("%.1f", pw) +
       "\" height=\"" + fmt("%.1f", ph) + "\" fill=\"none\" stroke=\"black\"/>\n";
  o += "<text x=\"" + fmt("%.1f", kLeft + pw / 2) + "\" y=\"" + fmt("%.1f", kHeight - 14) +
       "\" text-anchor=\"middle\" font-size=\"13\">" + escape(x_label) + "</text>\n";
  o += "<text x=\"18\" y=\"" + fmt("%.1f", kTop + ph / 2) + "\" text-anchor=\"middle\" font-size=\"13\" " +
       "transform=\"rotate(-90 18 " + fmt("%.1f", kTop + ph / 2) + ")\">" + escape(y_label) + "</text>\n";
  if (no_data)
    o += "<text x=\"" + fmt("%.1f", kLeft + pw / 2) + "\" y=\"" + fmt("%.1f", kTop + ph / 2) +
         "\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n";

  // One polyline per series with finite points (a dot too when it has only one).
  std::vector<std::string> colors;
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    colors.push_back(escape(s.color.empty() ? kPalette[k % std::size(kPalette)] : s.color));
    std::string pts;
    size_t n = 0;
    double lx = 0, ly = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      lx = px(s.x[i]), ly = py(s.y[i]);
      if (n++) pts += ' ';
      pts += fmt("%.2f", lx) + "," + fmt("%.2f", ly);
    }
    if (n == 0) continue;
    o += "<polyline clip-path=\"url(#plot-area)\" fill=\"none\" stroke=\"" + colors[k] +
         "\" stroke-width=\"1.5\" stroke-linejoin=\"round\" points=\"" + pts + "\"/>\n";
    if (n == 1)
      o += "<circle cx=\"" + fmt("%.2f", lx) + "\" cy=\"" + fmt("%.2f", ly) + "\" r=\"3\" fill=\"" + colors[k] +
           "\"/>\n";
  }

  // Legend, top right inside the plot box (loss curves fall away from that corner).
  if (!series.empty()) {
    size_t longest = 0;
    for (const Series& s : series) longest = std::max(longest, s.name.size());
    const double lw = 40 + 7.0 * double(longest), lh = 8 + 18.0 * double(series.size());
    const double lx = kLeft + pw - lw - 10, ly = kTop + 10;
    o += "<g>\n<rect x=\"" + fmt("%.1f", lx) + "\" y=\"" + fmt("%.1f", ly) + "\" width=\"" + fmt("%.1f", lw) +
         "\" height=\"" + fmt("%.1f", lh) + "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#999\"/>\n";
    for (size_t k = 0; k < series.size(); ++k) {
      const double y = ly + 16 + 18.0 * double(k);
      o += "<line x1=\"" + fmt("%.1f", lx + 8) + "\" y1=\"" + fmt("%.1f", y - 4) + "\" x2=\"" +
           fmt("%.1f", lx + 30) + "\" y2=\"" + fmt("%.1f", y - 4) + "\" stroke=\"" + colors[k] +
           "\" stroke-width=\"2\"/>\n";
      o += "<text x=\"" + fmt("%.1f", lx + 36) + "\" y=\"" + fmt("%.1f", y) + "\">" + escape(series[k].name) +
           "</text>\n";
    }
    o += "</g>\n";
  }
  o += "</svg>\n";
  return o;
}

void write_loss_svg(const std::string& path, const std::vector<Series>& series, const std::string& title,
                    const std::string& x_label, const std::string& y_label) {
  std::string svg;
  try {
    svg = loss_svg(series, title, x_label, y_label);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  AtomicFileWriter w(path);
  w.write(svg.data(), svg.size());
  w.commit();
}

}  // namespace tessera::train
