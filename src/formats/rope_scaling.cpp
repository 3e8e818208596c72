#include "formats/rope_scaling.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>

namespace tessera {

namespace {

// Wavelength of rotary frequency i: 2 pi / theta^(-2i / head_dim).
double wavelength(double theta, int64_t i, int64_t head_dim) {
  return 2.0 * M_PI * std::pow(theta, double(2 * i) / double(head_dim));
}

bool close(double a, double b, double tol = 1e-5) { return std::fabs(a - b) <= tol * std::fabs(b); }

bool reproduces(const Llama3RopeScaling& s, const std::vector<float>& factors, double theta, int64_t head_dim,
                double tol) {
  const std::vector<float> g = llama3_rope_factors(s, theta, head_dim);
  for (size_t i = 0; i < g.size(); ++i)
    if (!close(g[i], factors[i], tol)) return false;
  return true;
}

// v to 6 significant digits, so that 0.9999999 reads back as 1.
double round6(double v) {
  if (v == 0 || !std::isfinite(v)) return v;
  const double scale = std::pow(10.0, 5 - std::floor(std::log10(std::fabs(v))));
  return std::round(v * scale) / scale;
}

}  // namespace

std::vector<float> llama3_rope_factors(const Llama3RopeScaling& s, double theta, int64_t head_dim) {
  const double L = double(s.original_context);
  const double low_wavelen = L / s.low_freq_factor, high_wavelen = L / s.high_freq_factor;
  std::vector<float> f(size_t(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const double wl = wavelength(theta, i, head_dim);
    double d;
    if (wl < high_wavelen) {
      d = 1.0;
    } else if (wl > low_wavelen) {
      d = s.factor;
    } else {  // the frequency becomes (1 - smooth) * freq / factor + smooth * freq
      const double smooth = (L / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      d = 1.0 / ((1.0 - smooth) / s.factor + smooth);
    }
    f[size_t(i)] = float(d);
  }
  return f;
}

std::optional<Llama3RopeScaling> fit_llama3_rope(const std::vector<float>& factors, double theta, int64_t head_dim,
                                                 int64_t original_context) {
  if (head_dim < 2 || factors.size() != size_t(head_dim / 2) || original_context <= 0) return std::nullopt;
  const double F = *std::max_element(factors.begin(), factors.end());
  if (!(F > 1.0) || !std::isfinite(F)) return std::nullopt;
  const double L = double(original_context);
  // Kept frequencies (divisor 1) must all have shorter wavelengths than the divided ones
  // (divisor F), with the ramp between; on the ramp, smooth = A / wavelength - B exactly.
  double kept_max = 0, divided_min = std::numeric_limits<double>::infinity();
  std::vector<std::pair<double, double>> ramp;  // (1 / wavelength, smooth)
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const double wl = wavelength(theta, i, head_dim), d = factors[size_t(i)];
    if (close(d, 1.0)) {
      kept_max = std::max(kept_max, wl);
    } else if (close(d, F)) {
      divided_min = std::min(divided_min, wl);
    } else if (d > 1.0 && d < F) {
      ramp.emplace_back(1.0 / wl, (1.0 / d - 1.0 / F) / (1.0 - 1.0 / F));
    } else {
      return std::nullopt;
    }
  }
  double lo, hi;  // low_freq_factor, high_freq_factor
  if (ramp.size() >= 2) {
    // Least squares for smooth = A x - B, x = 1 / wavelength; A = L / (hi - lo), B = lo / (hi - lo).
    double sx = 0, ss = 0, sxx = 0, sxs = 0;
    for (auto [x, s] : ramp) sx += x, ss += s, sxx += x * x, sxs += x * s;
    const double n = double(ramp.size()), den = n * sxx - sx * sx;
    if (!(den > 0)) return std::nullopt;
    const double A = (n * sxs - sx * ss) / den, B = (A * sx - ss) / n;
    if (!(A > 0)) return std::nullopt;
    lo = B * L / A;
    hi = lo + L / A;
  } else {
    // One ramp point or none: the parameters are not unique. Any low_freq_factor in (D, x]
    // and high_freq_factor in [x, H) that put the ramp point where it is will do, where
    // D = L / (first divided wavelength), H = L / (last kept wavelength), x = L / ramp wavelength.
    const double D = std::isfinite(divided_min) ? L / divided_min : 0.0;
    const double H = kept_max > 0 ? L / kept_max : std::numeric_limits<double>::infinity();
    if (ramp.size() == 1) {
      const double x = L * ramp[0].first, s = ramp[0].second;
      const double lo_min = std::max(D, std::isfinite(H) ? (x - s * H) / (1 - s) : D);
      lo = 0.5 * (lo_min + x);
      hi = lo + (x - lo) / s;
    } else if (std::isfinite(H)) {
      lo = D + (H - D) / 3;
      hi = D + 2 * (H - D) / 3;
    } else {
      lo = 2 * D;
      hi = 4 * D;
    }
  }
  if (!(lo > 0) || !(hi > lo) || !std::isfinite(hi)) return std::nullopt;
  // Prefer round parameters (a file's divisors are floats), then exact reproduction.
  for (double tol : {2e-7, 1e-5})
    for (bool rounded : {true, false}) {
      Llama3RopeScaling s;
      s.factor = rounded ? round6(F) : F;
      s.low_freq_factor = rounded ? round6(lo) : lo;
      s.high_freq_factor = rounded ? round6(hi) : hi;
      s.original_context = original_context;
      if (s.high_freq_factor > s.low_freq_factor && reproduces(s, factors, theta, head_dim, tol)) return s;
    }
  return std::nullopt;
}

std::optional<float> uniform_rope_factor(const std::vector<float>& factors) {
  if (factors.empty()) return std::nullopt;
  for (float f : factors)
    if (f != factors[0]) return std::nullopt;
  return factors[0];
}

std::string describe_rope_scaling(const std::vector<float>& factors, double theta, int64_t head_dim) {
  char buf[160];
  if (factors.empty()) return "none";
  if (auto u = uniform_rope_factor(factors)) {
    if (*u == 1.f) return "none";
    std::snprintf(buf, sizeof buf, "linear x%g", double(*u));
    return buf;
  }
  if (auto s = fit_llama3_rope(factors, theta, head_dim)) {
    std::snprintf(buf, sizeof buf, "llama3 (factor %g, low_freq_factor %g, high_freq_factor %g, original context %lld)",
                  s->factor, s->low_freq_factor, s->high_freq_factor, (long long)s->original_context);
    return buf;
  }
  return "per-frequency divisors (" + std::to_string(factors.size()) + " values)";
}

}  // namespace tessera
