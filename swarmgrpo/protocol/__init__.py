"""The wire layer: messages, validation, signing. Imports nothing heavy (no torch, transformers,
vllm or hivemind; a test proves it), so the coordinator's network edge and tools stay light."""

PROTOCOL_VERSION = 2
"""Bumped on any change to swarm.proto that an older peer would misread. 2: all-reduce slices travel
in segments (`AllReducePart.segment`)."""

SUPPORTED_PROTOCOL_VERSIONS = frozenset({2})
