// Loss-curve SVG: structure, point counts, legend, empty input, tick values, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli_util.h"
#include "core/error.h"
#include "train/plot.h"

using namespace tessera;
using namespace tessera::train;

namespace {

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

// Points in the i-th polyline's points="..." attribute.
size_t polyline_points(const std::string& svg, size_t i) {
  size_t p = 0;
  for (size_t k = 0; k <= i; ++k) p = svg.find("<polyline", k ? p + 1 : 0);
  if (p == std::string::npos) return 0;
  const size_t a = svg.find("points=\"", p) + 8, b = svg.find('"', a);
  const std::string pts = svg.substr(a, b - a);
  return pts.empty() ? 0 : count(pts, " ") + 1;
}

// Every '<' opens a tag that closes with '>', and opening/closing tags balance.
bool balanced(const std::string& s) {
  int depth = 0;
  for (size_t p = s.find('<'); p != std::string::npos; p = s.find('<', p + 1)) {
    const size_t e = s.find('>', p);
    if (e == std::string::npos) return false;
    const std::string tag = s.substr(p, e - p + 1);
    if (tag.find('<', 1) != std::string::npos) return false;
    if (tag[1] == '/') --depth;
    else if (tag[tag.size() - 2] != '/') ++depth;
    if (depth < 0) return false;
  }
  return depth == 0;
}

}  // namespace

TEST(TrainPlot, TwoSeriesWrittenAsWellFormedSvg) {
  Series train{"train <bf16>", {}, {}, ""}, val{"val", {}, {}, "red"};
  for (int i = 0; i < 100; ++i) {
    train.x.push_back(i);
    train.y.push_back(4.0 * std::exp(-i / 30.0) + 1.0);
  }
  for (int i = 0; i < 100; i += 10) {
    val.x.push_back(i);
    val.y.push_back(4.2 * std::exp(-i / 30.0) + 1.1);
  }
  val.y[3] = NAN;  // skipped
  val.y[4] = INFINITY;
  const std::string path = test::temp_path("loss.svg");
  write_loss_svg(path, {train, val}, "loss & friends");
  const std::string svg = test::slurp(path);
  std::remove(path.c_str());
  ASSERT_EQ(svg.rfind("<svg", 0), 0u);
  ASSERT_GE(svg.size(), 7u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_TRUE(balanced(svg));
  EXPECT_EQ(count(svg, "<polyline"), 2u);
  EXPECT_EQ(polyline_points(svg, 0), 100u);
  EXPECT_EQ(polyline_points(svg, 1), 8u);
  EXPECT_NE(svg.find("train &lt;bf16&gt;"), std::string::npos);  // legend names, escaped
  EXPECT_NE(svg.find(">val<"), std::string::npos);
  EXPECT_NE(svg.find("loss &amp; friends"), std::string::npos);
  EXPECT_NE(svg.find(">step<"), std::string::npos);
  EXPECT_NE(svg.find(">loss<"), std::string::npos);
  EXPECT_NE(svg.find("stroke=\"red\""), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_NE(svg.find(">100<"), std::string::npos);  // x ticks 0..100 step 20
  EXPECT_NE(svg.find(">1<"), std::string::npos);    // y data 1.15..5.3: ticks 1..6 step 1
  EXPECT_NE(svg.find(">6<"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp." + std::to_string(::getpid())));
}

TEST(TrainPlot, EmptySeriesAndNoData) {
  const std::string a = loss_svg({}, "nothing");
  EXPECT_EQ(a.rfind("<svg", 0), 0u);
  EXPECT_TRUE(balanced(a));
  EXPECT_EQ(count(a, "<polyline"), 0u);
  EXPECT_NE(a.find("no data"), std::string::npos);
  // An empty series and an all-NaN one: legend entries, no polylines; a one-point series gets a dot.
  const std::string b = loss_svg({{"empty", {}, {}, ""}, {"nan", {1, 2}, {NAN, NAN}, ""}, {"one", {5}, {2.5}, ""}},
                                 "sparse");
  EXPECT_TRUE(balanced(b));
  EXPECT_EQ(count(b, "<polyline"), 1u);
  EXPECT_EQ(polyline_points(b, 0), 1u);
  EXPECT_EQ(count(b, "<circle"), 1u);
  for (const char* name : {">empty<", ">nan<", ">one<"}) EXPECT_NE(b.find(name), std::string::npos) << name;
}

TEST(TrainPlot, NiceTicks) {
  EXPECT_EQ(nice_ticks(0, 100, 6), (std::vector<double>{0, 20, 40, 60, 80, 100}));
  const std::vector<double> t = nice_ticks(1.03, 4.87, 6);  // step 0.768 rounds up to 1
  EXPECT_EQ(t, (std::vector<double>{1, 2, 3, 4, 5}));
  const std::vector<double> f = nice_ticks(2.31, 2.52, 6);  // step 0.042 -> 0.05
  ASSERT_EQ(f.size(), 6u);
  EXPECT_NEAR(f.front(), 2.30, 1e-12);
  EXPECT_NEAR(f.back(), 2.55, 1e-12);
  const std::vector<double> c = nice_ticks(3, 3, 6);  // one value: widened around it
  EXPECT_LE(c.front(), 3);
  EXPECT_GE(c.back(), 3);
  EXPECT_GT(c.size(), 2u);
}

TEST(TrainPlot, ErrorsNameThePathOrSeries) {
  const std::string bad = "/nonexistent-dir-for-tessera/loss.svg";
  try {
    write_loss_svg(bad, {{"a", {1, 2}, {3, 4}, ""}}, "t");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  try {
    loss_svg({{"mismatch", {1, 2, 3}, {1, 2}, ""}}, "t");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mismatch"), std::string::npos) << e.what();
  }
}
