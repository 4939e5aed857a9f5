"""What the vLLM tests share: skip without vLLM (fail instead under SWARMGRPO_REQUIRE_VLLM=1, as
`make test` sets), and a tiny model shape vLLM's CPU attention can run."""

import os

import pytest

from swarmgrpo.node.engines.vllm_engine import unavailable_reason
from swarmgrpo.trainer.models import TinyShape

# vLLM's CPU attention needs head_dim >= 32; the default tiny shape has 16.
VLLM_TINY_SHAPE = TinyShape(
    hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256
)


def skip_module_without_vllm() -> None:
    reason = unavailable_reason()
    if reason:
        if os.environ.get("SWARMGRPO_REQUIRE_VLLM") == "1":
            raise RuntimeError(f"SWARMGRPO_REQUIRE_VLLM=1 but {reason}")
        pytest.skip(reason, allow_module_level=True)
