"""The wire layer: messages, validation, signing. Imports nothing heavy (no torch, transformers,
vllm or hivemind; a test proves it), so the coordinator's network edge and tools stay light."""

PROTOCOL_VERSION = 1
"""Bumped on any change to swarm.proto that an older peer would misread."""

SUPPORTED_PROTOCOL_VERSIONS = frozenset({1})
