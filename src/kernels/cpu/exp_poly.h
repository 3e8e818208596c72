// The constants of the vectorised exp (exp_avx2.h, exp_avx512.h): one
// definition for both vector widths. Cody-Waite reduction x = n ln2 + r
// (ln2 split into a short high part and the rest), then the Cephes expf
// polynomial exp(r) ~ 1 + r + r^2 (c[0] r^5 + c[1] r^4 + ... + c[5]).
#pragma once

namespace tessera::cpu::exp_poly {
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693359375f;
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kMinArg = -87.3f;  // below: exp underflows to ~0
inline constexpr float kC[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};  // Horner order
}  // namespace tessera::cpu::exp_poly
