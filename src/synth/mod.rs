//! Synth: writes scenario captures with known ground truth (for tests, the demo and benchmarks).
