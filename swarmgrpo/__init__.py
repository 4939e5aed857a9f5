"""swarmgrpo: GRPO training of language models on volunteered compute."""

__version__ = "0.1.0"
