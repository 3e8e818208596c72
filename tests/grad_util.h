// Helpers of the finite-difference gradient tests (test_train_grad.cpp, test_prefix.cpp,
// test_bottleneck.cpp): Gaussian vectors, central differences, a relative error.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

namespace tessera::test {

using Vec = std::vector<double>;

inline Vec randn(size_t n, std::mt19937_64& rng, double sd = 1.0) {
  std::normal_distribution<double> d(0.0, sd);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Central differences of f with respect to x (perturbed in place and restored).
inline Vec numgrad(Vec& x, const std::function<double()>& f, double h = 1e-5) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// max |a - b| / max |b|: relative to the gradient's scale.
inline double rel_err(const Vec& a, const Vec& b) {
  double e = 0, m = 1e-300;
  for (size_t i = 0; i < a.size(); ++i) e = std::max(e, std::abs(a[i] - b[i])), m = std::max(m, std::abs(b[i]));
  return e / m;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace tessera::test
