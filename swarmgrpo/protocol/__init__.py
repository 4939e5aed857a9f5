"""The wire layer: messages, validation, signing. Imports nothing heavy (no torch, transformers,
vllm or hivemind; a test proves it), so the coordinator's network edge and tools stay light."""

PROTOCOL_VERSION = 4
"""Bumped on any change to swarm.proto or the run config that an older peer would misread. 2:
all-reduce slices travel in segments (`AllReducePart.segment`). 3: the run config carries `device`,
`fp8` and `weights_fp8` (an older node refuses unknown keys), and workers agree on the block-FP8
weight hash too. 4: the Join reply carries the [train] table only; workers report the sizes of
their weight files and the hash and size of their training state (a safetensors file, no longer a
pickle), and the set-aside groups of their shard; all-reduce parts are refused from a peer that is
not the member they claim."""

SUPPORTED_PROTOCOL_VERSIONS = frozenset({4})
