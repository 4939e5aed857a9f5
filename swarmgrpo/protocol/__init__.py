"""The wire layer: messages, validation, signing. Imports nothing heavy (no torch, transformers,
vllm or hivemind; a test proves it), so the coordinator's network edge and tools stay light."""

PROTOCOL_VERSION = 3
"""Bumped on any change to swarm.proto or the run config that an older peer would misread. 2:
all-reduce slices travel in segments (`AllReducePart.segment`). 3: the run config carries `device`,
`fp8` and `weights_fp8` (an older node refuses unknown keys), and workers agree on the block-FP8
weight hash too."""

SUPPORTED_PROTOCOL_VERSIONS = frozenset({3})
