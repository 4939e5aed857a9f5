"""The training config: one typed tree, TRL GRPOConfig names where the idea is the same.

Load with `swarmgrpo.core.configtree.load_config(TrainConfig, path, overrides)`; `validate()` checks
the relations between fields (batch divisible by the group size, ranges) with one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.tasks.config import TaskConfig

GRAD_COMPRESSIONS = ("none", "fp16", "int8", "fp8", "uint8", "powersgd")
DTYPES = ("float32", "bfloat16")
ENGINES = ("auto", "vllm", "transformers")
FP8_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """A single-process GRPO run (the node's solo mode) and the GRPO hyper-parameters of any run."""

    model: str = "smollm2-135m"
    """Built-in name (smollm2-135m, tiny), a local folder, or a Hugging Face id already in the local cache."""

    dtype: str = "float32"
    """Compute dtype: "float32", or "bfloat16" (autocast; master weights and optimizer state stay fp32)."""

    device: str = "auto"
    """Where the model trains and the transformers engine samples: "cuda" (the first GPU), "cpu", or
    "auto" (cuda where there is one). A node's `--device` overrides it for that node."""

    fp8: str = "auto"
    """FP8 training products (DeepSeek-V3's tiles; `trainer/fp8.py`) for every linear layer but the
    head: "auto" uses them where the model sits on a GPU that multiplies FP8 (compute capability
    >= 8.9), so a volunteer changes nothing; "on" uses them on any device (on CPU they run as slow
    128-wide slices: for tests); "off" never."""

    weights_fp8: bool = False
    """Network runs: the trainer also publishes each version's hash in block FP8 (the linear layers'
    weights as e4m3 in 128×128 blocks, ~0.6× the bytes of bf16 for SmolLM2-135M), so nodes that roll
    out in FP8 (or choose `--weights-format fp8`) fetch that file instead; costs the trainer ~0.7 s a
    step on one CPU core to make and hash it."""

    engine: str = "auto"
    """Rollout engine: "vllm", "transformers", or "auto" (vLLM where it imports and supports the
    model and sampling settings, else transformers). A node's `--engine` overrides it for that node."""

    seed: int = 0
    """Seed of sampling and of the prompt stream."""

    max_steps: int = 20
    """Optimizer steps to run (a resumed run continues up to this number)."""

    num_generations: int = 8
    """G: completions sampled per prompt; advantages are normalised within each group of G."""

    generation_batch_size: int = 32
    """Completions per step (prompts per step × num_generations); must be divisible by num_generations."""

    micro_batch_size: int = 8
    """Completions per forward/backward pass (gradient accumulation); bounds activation memory.

    A group larger than this is split across passes (its prompt is re-run for each piece)."""

    grad_compression: str = "none"
    """How gradient workers of a step average their gradients over the network: none (float32),
    fp16 (block-scaled), int8 (block-scaled 8-bit), fp8 (block-scaled float8 e4m3), uint8 (hivemind's
    8-bit), or powersgd (rank `powersgd_rank`, fp16 factors).
    For 8 bits use fp8: int8 sends a block's small values as 0, error feedback delivers them later in
    lumps, and AdamW, which scales each element by its recent magnitude, then moves the weights 13%
    away from where float32 does (fp8: 2%; benchmarks/ef_under_adam.py) and learns worse."""

    grad_error_feedback: bool = True
    """fp16 / int8 / fp8 / uint8: each gradient worker adds what its encodings lost in one step to the next
    step's, so rounding errors are delayed instead of dropped (PowerSGD always does)."""

    powersgd_rank: int = 1
    """Rank of PowerSGD's factors (grad_compression = "powersgd")."""

    allreduce_timeout_s: float = 60.0
    """A gradient worker not heard from within this many seconds of an all-reduce is dropped from
    the step (its shard's rollouts go back to the pool) and the others go on without it."""

    max_prompt_length: int = 256
    """Prompts longer than this many tokens are refused."""

    max_completion_length: int = 32
    """Tokens sampled per completion at most."""

    temperature: float = 1.0
    """Sampling temperature; log-probs of behavior and policy are both taken at this temperature."""

    top_p: float = 1.0
    """Nucleus sampling; 1.0 disables it."""

    top_k: int = 0
    """Top-k sampling; 0 disables it."""

    learning_rate: float = 1e-5
    """AdamW learning rate (constant)."""

    adam_beta1: float = 0.9
    """AdamW beta1."""

    adam_beta2: float = 0.99
    """AdamW beta2."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm; 0 disables clipping."""

    beta: float = 0.0
    """KL coefficient against the frozen initial policy (k3 estimator); 0 loads no reference model."""

    epsilon: float = 0.2
    """Lower clip range of the importance ratio (and the upper one unless epsilon_high is set)."""

    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher, e.g. 0.28); unset means epsilon."""

    delta: float = 4.0
    """Two-sided cap on the unclipped ratio (INTELLECT-2's 4.0); must exceed 1 + epsilon_high. Always
    on: a stale group's ratio is taken against a node's behavior log-probs, and uncapped a forged -50
    makes r ~ 1e17 and the step whatever that node wants."""

    loss_type: str = "grpo"
    """Loss aggregation: "grpo" (per-sequence mean, then batch mean), "dapo" (token mean), "dr_grpo" (constant)."""

    advantage_estimator: str = "grpo"
    """"grpo": (r − mean) / (std + eps) per group; "dr_grpo": r − mean (TRL's scale_rewards=False)."""

    tis_cap: float | None = 2.0
    """Truncated importance sampling cap for engine/trainer mismatch (TRL's vllm_importance_sampling_cap)."""

    output_dir: str = "runs/default"
    """Where checkpoints and metrics.jsonl go."""

    save_steps: int = 0
    """Checkpoint every this many steps; 0 saves only at the end."""

    save_total_limit: int = 2
    """Keep only the newest this many checkpoints in output_dir (a trainer node's state folder); 0
    keeps them all. SmolLM2-135M's is ~1.6 GB with its optimizer state."""

    resume: bool = True
    """Continue from the newest checkpoint in output_dir when there is one."""

    eval_n: int = 0
    """Held-out problems to score greedily before and after training; 0 skips it."""

    task: TaskConfig = field(default_factory=TaskConfig)
    """The task: prompts, reward, held-out split."""

    @property
    def prompts_per_step(self) -> int:
        return self.generation_batch_size // self.num_generations

    def validate(self) -> None:
        positive = "max_steps num_generations generation_batch_size micro_batch_size max_prompt_length max_completion_length"
        for name in positive.split():
            if getattr(self, name) < 1:
                raise ConfigError(
                    name, f"must be at least 1, got {getattr(self, name)}", f"set {name} to 1 or more"
                )
        if self.num_generations < 2:
            raise ConfigError(
                "num_generations", "GRPO needs at least 2 completions per prompt", "set num_generations >= 2"
            )
        if self.generation_batch_size % self.num_generations:
            lo = self.generation_batch_size // self.num_generations * self.num_generations
            raise ConfigError(
                "generation_batch_size",
                f"{self.generation_batch_size} is not divisible by num_generations={self.num_generations}",
                f"use a multiple of {self.num_generations}, e.g. {max(lo, self.num_generations)}",
            )
        if self.grad_compression not in GRAD_COMPRESSIONS:
            raise ConfigError(
                "grad_compression",
                f"unknown compression '{self.grad_compression}'",
                f"choose one of: {', '.join(GRAD_COMPRESSIONS)}",
            )
        if self.allreduce_timeout_s <= 0:
            raise ConfigError(
                "allreduce_timeout_s", f"must be > 0, got {self.allreduce_timeout_s}", "use e.g. 60"
            )
        if self.powersgd_rank < 1:
            raise ConfigError("powersgd_rank", f"must be >= 1, got {self.powersgd_rank}", "use 1, 2 or 4")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"unknown dtype '{self.dtype}'", f"choose one of: {', '.join(DTYPES)}")
        if self.device not in DEVICES:
            raise ConfigError(
                "device", f"unknown device '{self.device}'", f"choose one of: {', '.join(DEVICES)}"
            )
        if self.fp8 not in FP8_MODES:
            raise ConfigError("fp8", f"unknown mode '{self.fp8}'", f"choose one of: {', '.join(FP8_MODES)}")
        if self.engine not in ENGINES:
            raise ConfigError(
                "engine", f"unknown engine '{self.engine}'", f"choose one of: {', '.join(ENGINES)}"
            )
        if self.temperature < 0:
            raise ConfigError(
                "temperature", f"must be >= 0, got {self.temperature}", "use 1.0 for plain sampling"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(
                "top_p", f"must be in (0, 1], got {self.top_p}", "use 1.0 to disable nucleus sampling"
            )
        for name in ("learning_rate", "epsilon"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)}", f"set a positive {name}")
        for name in (
            "beta",
            "weight_decay",
            "max_grad_norm",
            "save_steps",
            "save_total_limit",
            "eval_n",
            "top_k",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(
                    name, f"must be >= 0, got {getattr(self, name)}", f"set {name} to 0 or more"
                )
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ConfigError(
                "epsilon_high", f"{self.epsilon_high} < epsilon={self.epsilon}", "unset it or raise it"
            )
        top = 1 + (self.epsilon_high or self.epsilon)
        if self.delta <= top:
            raise ConfigError(
                "delta",
                f"{self.delta} is inside the clip range (top {top:g})",
                f"raise it above {top:g}, e.g. 4.0",
            )
        if self.tis_cap is not None and self.tis_cap < 1:
            raise ConfigError(
                "tis_cap", f"must be >= 1, got {self.tis_cap}", "use 2.0, or unset it to disable TIS"
            )
        # Names are checked against their registries here so a typo fails before any model loads.
        from swarmgrpo.trainer.grpo import ADVANTAGES, AGGREGATORS

        ADVANTAGES.get(self.advantage_estimator)
        AGGREGATORS.get(self.loss_type)
