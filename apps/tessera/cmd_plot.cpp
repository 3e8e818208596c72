// tessera plot: the loss curves of several training runs in one SVG (their
// metrics.jsonl), against step, tokens or wall time, for comparisons such as
// dense vs mixture-of-experts at equal time (docs/moe.md); or, with --experts,
// a mixture-of-experts run's expert load over time (each expert's share of the
// routed slots, summed over the MoE layers).
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
  bool experts = false;
  app.add_flag("--experts", experts, "plot each expert's share of the routed slots over time (one MoE run)");
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
      if (experts) {  // expert_tokens: per MoE layer, the slots each expert took
        if (!j.contains("expert_tokens") || !j["expert_tokens"].is_array() || j["expert_tokens"].empty())
          fail(path, ": line ", n + 1, " has no expert_tokens (not a mixture-of-experts run)");
        const auto& layers = j["expert_tokens"];
        std::vector<double> per(layers[0].size(), 0.0);
        double total = 0;
        for (const auto& l : layers)
          for (size_t e = 0; e < per.size() && e < l.size(); ++e) per[e] += l[e].get<double>(), total += l[e].get<double>();
        if (series.size() < per.size()) {
          for (size_t e = series.size(); e < per.size(); ++e) series.push_back({name + " expert " + std::to_string(e), {}, {}, ""});
        }
        for (size_t e = 0; e < per.size(); ++e)
          series[e].x.push_back(x), series[e].y.push_back(total > 0 ? per[e] / total : 0.0);
        continue;
      }
      if (j.contains("loss") && j["loss"].is_number()) tr.x.push_back(x), tr.y.push_back(j["loss"].get<double>());
      if (j.contains("val_loss") && j["val_loss"].is_number()) va.x.push_back(x), va.y.push_back(j["val_loss"].get<double>());
    }
    if (experts) {
      if (runs.size() > 1) fail("--experts plots one run, got ", runs.size());
      continue;
    }
    if (which != "val") series.push_back(tr);
    if (which != "train") series.push_back(va);
  }
  const std::string xl = x_axis == "time" ? "seconds" : x_axis;
  if (experts)
    train::write_loss_svg(out, series, title == "loss" ? "expert load" : title, xl, "share of routed slots");
  else
    train::write_loss_svg(out, series, title + " vs " + xl, xl, "loss");
  std::fprintf(stderr, "plot: %zu series -> %s\n", series.size(), out.c_str());
  return 0;
}

}  // namespace tessera::cli
