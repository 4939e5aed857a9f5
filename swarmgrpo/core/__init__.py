"""What every layer shares and nothing heavy: user errors, the config tree, and device knowledge
(the probe, FP8 capability, device resolution; torch is imported inside the functions that need it)."""
