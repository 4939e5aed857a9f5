"""Chat prompts to token ids with the model's own chat template."""

from __future__ import annotations

from swarmgrpo.core.errors import UserError


def encode_chat(tokenizer, messages, max_prompt_length: int) -> list[int]:
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    if len(ids) > max_prompt_length:
        raise UserError(
            f"a prompt has {len(ids)} tokens, more than max_prompt_length={max_prompt_length}; "
            "raise max_prompt_length or shorten the prompts"
        )
    return list(ids)
