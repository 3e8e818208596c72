// Helpers of the preference-tuning tests (test_dpo.cpp, test_reward.cpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace tessera::test {

// 80 synthetic pairs: a kind story ending chosen over an unkind one.
inline void write_kindness_pairs(const std::string& path) {
  std::ofstream f(path);
  const char* names[] = {"Tom", "Lily", "Ben", "Sue"};
  const char* good[] = {"shared the toy.", "helped the bird.", "hugged mom."};
  const char* bad[] = {"broke the toy.", "hit the bird.", "yelled at mom."};
  for (int i = 0; i < 80; ++i)
    f << R"({"prompt": "Once upon a time, )" << names[i % 4] << R"(", "chosen": " )" << good[i % 3]
      << R"(", "rejected": " )" << bad[i % 3] << R"("})" << "\n";
}

// max |numeric - analytic| / max |numeric| over the elements i of p visited by next(i)
// (central differences of f, step 1e-5); scale: max |numeric| out.
inline double fd_rel_error(std::vector<double>& p, const std::vector<double>& g, const std::function<double()>& f,
                           size_t end, const std::function<size_t(size_t)>& next, double* scale) {
  double err = 0, mag = 0;
  for (size_t i = 0; i < end; i = next(i)) {
    const double x0 = p[i];
    p[i] = x0 + 1e-5;
    const double fp = f();
    p[i] = x0 - 1e-5;
    const double fm = f();
    p[i] = x0;
    const double num = (fp - fm) / 2e-5;
    err = std::max(err, std::abs(num - g[i])), mag = std::max(mag, std::abs(num));
  }
  *scale = mag;
  return err / std::max(mag, 1e-300);
}

}  // namespace tessera::test
