"""Independent restatements of the official FlashOcc arithmetic and the parity rules, used only by tests and
benchmarks (production code never imports this package)."""
