// tessera plot: the loss curves of several training runs in one SVG (their
// metrics.jsonl), against step, tokens or wall time, for comparisons such as
// dense vs mixture-of-experts at equal time (docs/moe.md).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "train/plot.h"

namespace tessera::cli {

int cmd_plot(int argc, char** argv) {
  CLI::App app{"Plot the loss curves of training runs in one SVG.", "tessera plot"};
  std::vector<std::string> runs;
  std::string out, x_axis = "step", which = "both", title = "loss";
  app.add_option("runs", runs, "run directories (each with metrics.jsonl); NAME=DIR sets the legend name")->required();
  app.add_option("-o,--out", out, "output SVG file")->required();
  app.add_option("--x", x_axis, "x axis: step, tokens or time (seconds)")->check(CLI::IsMember({"step", "tokens", "time"}));
  app.add_option("--loss", which, "train, val or both")->check(CLI::IsMember({"train", "val", "both"}));
  app.add_option("--title", title, "plot title");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  const char* xkey = x_axis == "step" ? "step" : x_axis == "tokens" ? "tokens" : "elapsed_s";
  std::vector<train::Series> series;
  for (const std::string& arg : runs) {
    const size_t eq = arg.find('=');
    const std::string dir = eq == std::string::npos ? arg : arg.substr(eq + 1);
    const std::string name = eq == std::string::npos ? std::filesystem::path(dir).filename().string() : arg.substr(0, eq);
    const std::string path = dir + "/metrics.jsonl";
    std::ifstream in(path);
    if (!in) fail(path, ": cannot open (is ", dir, " a training run directory?)");
    train::Series tr{name + " train", {}, {}, ""}, va{name + " val", {}, {}, ""};
    int64_t n = 0;
    for (std::string line; std::getline(in, line); ++n) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object()) fail(path, ": line ", n + 1, " is not a JSON object");
      if (!j.contains(xkey) || !j[xkey].is_number()) fail(path, ": line ", n + 1, " has no number '", xkey, "'");
      const double x = j[xkey].get<double>();
      if (j.contains("loss") && j["loss"].is_number()) tr.x.push_back(x), tr.y.push_back(j["loss"].get<double>());
      if (j.contains("val_loss") && j["val_loss"].is_number()) va.x.push_back(x), va.y.push_back(j["val_loss"].get<double>());
    }
    if (which != "val") series.push_back(tr);
    if (which != "train") series.push_back(va);
  }
  train::write_loss_svg(out, series, title + " vs " + (x_axis == "time" ? "seconds" : x_axis));
  std::fprintf(stderr, "plot: %zu series -> %s\n", series.size(), out.c_str());
  return 0;
}

}  // namespace tessera::cli
