// The project's one random generator: xoshiro256** (Blackman & Vigna 2018), its state filled
// from the seed by splitmix64 as its authors advise, and splitmix64 itself for hashing
// counters into seeds. Small, fast and bit-identical on every platform (std:: distributions
// differ between standard libraries), so sampled tokens (infer/sampler.h) and the data
// loader's draws (data/loader.h, pure functions of seed, epoch and position) replay exactly.
#pragma once
#include <cstdint>

namespace dsv3 {

// splitmix64 step (Steele, Lea, Flood 2014): a bijective mixer of a 64-bit counter.
inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Hash of a tuple of counters, for per-(seed, epoch, doc) streams.
inline uint64_t mix_key(uint64_t seed, uint64_t a, uint64_t b = 0) {
  uint64_t x = seed;
  uint64_t h = splitmix64(x);
  x = h ^ a;
  h = splitmix64(x);
  x = h ^ b;
  return splitmix64(x);
}

class Rng {
 public:
  // splitmix64 is a bijection of a counter, so four consecutive outputs are never all zero
  // (the one state xoshiro cannot leave).
  explicit Rng(uint64_t seed = 0) {
    for (uint64_t& w : s_) w = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t r = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  // U[0,1) with 24 random bits (every value exactly representable as float).
  float uniform() { return float(next() >> 40) * 0x1p-24f; }
  // U[0,1) with 53 random bits, e.g. for inverse-CDF draws over a 129K vocabulary where 24
  // bits would quantise probabilities to 6e-8.
  double uniform_double() { return double(next() >> 11) * 0x1p-53; }
  // Uniform integer in [0, n) without modulo bias (Lemire 2019), n > 0.
  uint64_t below(uint64_t n) {
    __uint128_t m = __uint128_t(next()) * n;
    uint64_t low = uint64_t(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = __uint128_t(next()) * n;
        low = uint64_t(m);
      }
    }
    return uint64_t(m >> 64);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace dsv3
