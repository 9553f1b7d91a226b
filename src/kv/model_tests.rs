//! Randomized comparison of `KvStore` against a simple model (filled in below).
