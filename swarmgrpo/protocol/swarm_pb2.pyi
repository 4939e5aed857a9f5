from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_ROLLOUT: _ClassVar[Role]
    ROLE_TRAIN: _ClassVar[Role]

class LeaseStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEASE_STATUS_UNSPECIFIED: _ClassVar[LeaseStatus]
    LEASE_GRANTED: _ClassVar[LeaseStatus]
    LEASE_WAIT: _ClassVar[LeaseStatus]
    LEASE_RESYNC: _ClassVar[LeaseStatus]
    LEASE_FINISHED: _ClassVar[LeaseStatus]

class SubmitStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBMIT_STATUS_UNSPECIFIED: _ClassVar[SubmitStatus]
    SUBMIT_ACCEPTED: _ClassVar[SubmitStatus]
    SUBMIT_STALE: _ClassVar[SubmitStatus]
    SUBMIT_EXPIRED: _ClassVar[SubmitStatus]
    SUBMIT_DUPLICATE: _ClassVar[SubmitStatus]

class BatchStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_STATUS_UNSPECIFIED: _ClassVar[BatchStatus]
    BATCH_READY: _ClassVar[BatchStatus]
    BATCH_WAIT: _ClassVar[BatchStatus]
    BATCH_RESYNC: _ClassVar[BatchStatus]
    BATCH_FINISHED: _ClassVar[BatchStatus]

class StepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATUS_UNSPECIFIED: _ClassVar[StepStatus]
    STEP_PUBLISHED: _ClassVar[StepStatus]
    STEP_REJECTED: _ClassVar[StepStatus]

ROLE_UNSPECIFIED: Role
ROLE_ROLLOUT: Role
ROLE_TRAIN: Role
LEASE_STATUS_UNSPECIFIED: LeaseStatus
LEASE_GRANTED: LeaseStatus
LEASE_WAIT: LeaseStatus
LEASE_RESYNC: LeaseStatus
LEASE_FINISHED: LeaseStatus
SUBMIT_STATUS_UNSPECIFIED: SubmitStatus
SUBMIT_ACCEPTED: SubmitStatus
SUBMIT_STALE: SubmitStatus
SUBMIT_EXPIRED: SubmitStatus
SUBMIT_DUPLICATE: SubmitStatus
BATCH_STATUS_UNSPECIFIED: BatchStatus
BATCH_READY: BatchStatus
BATCH_WAIT: BatchStatus
BATCH_RESYNC: BatchStatus
BATCH_FINISHED: BatchStatus
STEP_STATUS_UNSPECIFIED: StepStatus
STEP_PUBLISHED: StepStatus
STEP_REJECTED: StepStatus

class Auth(_message.Message):
    __slots__ = ("node_id", "nonce", "public_key", "signature", "timestamp_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    public_key: bytes
    nonce: int
    timestamp_ms: int
    signature: bytes
    def __init__(
        self,
        node_id: str | None = ...,
        public_key: bytes | None = ...,
        nonce: int | None = ...,
        timestamp_ms: int | None = ...,
        signature: bytes | None = ...,
    ) -> None: ...

class Capabilities(_message.Message):
    __slots__ = (
        "compute_capability",
        "cpu_cores",
        "device",
        "device_memory_bytes",
        "device_name",
        "engines",
        "fp8",
        "memory_bytes",
    )
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    FP8_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    device: str
    device_name: str
    memory_bytes: int
    device_memory_bytes: int
    compute_capability: str
    fp8: bool
    cpu_cores: int
    engines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self,
        device: str | None = ...,
        device_name: str | None = ...,
        memory_bytes: int | None = ...,
        device_memory_bytes: int | None = ...,
        compute_capability: str | None = ...,
        fp8: bool | None = ...,
        cpu_cores: int | None = ...,
        engines: _Iterable[str] | None = ...,
    ) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = (
        "auth",
        "capabilities",
        "join_token",
        "peer_addrs",
        "peer_id",
        "protocol_version",
        "roles",
        "software_version",
    )
    AUTH_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    protocol_version: int
    join_token: str
    capabilities: Capabilities
    roles: _containers.RepeatedScalarFieldContainer[Role]
    peer_id: str
    peer_addrs: _containers.RepeatedScalarFieldContainer[str]
    software_version: str
    def __init__(
        self,
        auth: Auth | _Mapping | None = ...,
        protocol_version: int | None = ...,
        join_token: str | None = ...,
        capabilities: Capabilities | _Mapping | None = ...,
        roles: _Iterable[Role | str] | None = ...,
        peer_id: str | None = ...,
        peer_addrs: _Iterable[str] | None = ...,
        software_version: str | None = ...,
    ) -> None: ...

class JoinReply(_message.Message):
    __slots__ = (
        "heartbeat_interval_s",
        "initial_peers",
        "node_id",
        "policy_version",
        "protocol_version",
        "roles",
        "run_config_toml",
        "run_id",
    )
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PEERS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    protocol_version: int
    run_id: str
    run_config_toml: str
    policy_version: int
    roles: _containers.RepeatedScalarFieldContainer[Role]
    initial_peers: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_interval_s: float
    def __init__(
        self,
        node_id: str | None = ...,
        protocol_version: int | None = ...,
        run_id: str | None = ...,
        run_config_toml: str | None = ...,
        policy_version: int | None = ...,
        roles: _Iterable[Role | str] | None = ...,
        initial_peers: _Iterable[str] | None = ...,
        heartbeat_interval_s: float | None = ...,
    ) -> None: ...

class WeightHolder(_message.Message):
    __slots__ = ("node_id", "peer_addrs", "peer_id", "policy_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    peer_addrs: _containers.RepeatedScalarFieldContainer[str]
    policy_version: int
    def __init__(
        self,
        node_id: str | None = ...,
        peer_id: str | None = ...,
        peer_addrs: _Iterable[str] | None = ...,
        policy_version: int | None = ...,
    ) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("activity", "auth", "policy_version", "tokens_per_s")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    policy_version: int
    activity: str
    tokens_per_s: float
    def __init__(
        self,
        auth: Auth | _Mapping | None = ...,
        policy_version: int | None = ...,
        activity: str | None = ...,
        tokens_per_s: float | None = ...,
    ) -> None: ...

class PolicyState(_message.Message):
    __slots__ = ("finished", "holders", "max_staleness", "policy_version", "weight_hash")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_HASH_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    weight_hash: str
    holders: _containers.RepeatedCompositeFieldContainer[WeightHolder]
    max_staleness: int
    finished: bool
    def __init__(
        self,
        policy_version: int | None = ...,
        weight_hash: str | None = ...,
        holders: _Iterable[WeightHolder | _Mapping] | None = ...,
        max_staleness: int | None = ...,
        finished: bool | None = ...,
    ) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("auth", "max_prompts", "policy_version")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    policy_version: int
    max_prompts: int
    def __init__(
        self,
        auth: Auth | _Mapping | None = ...,
        policy_version: int | None = ...,
        max_prompts: int | None = ...,
    ) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("max_tokens", "seed", "temperature", "top_k", "top_p")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int
    def __init__(
        self,
        temperature: float | None = ...,
        top_p: float | None = ...,
        top_k: int | None = ...,
        max_tokens: int | None = ...,
        seed: int | None = ...,
    ) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("prompt_index", "token_ids")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, prompt_index: int | None = ..., token_ids: _Iterable[int] | None = ...) -> None: ...

class LeaseReply(_message.Message):
    __slots__ = (
        "deadline_ms",
        "group_size",
        "lease_id",
        "message",
        "policy",
        "policy_version",
        "prompts",
        "retry_after_s",
        "sampling",
        "status",
    )
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    status: LeaseStatus
    lease_id: str
    policy_version: int
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    group_size: int
    sampling: Sampling
    deadline_ms: int
    retry_after_s: float
    message: str
    policy: PolicyState
    def __init__(
        self,
        status: LeaseStatus | str | None = ...,
        lease_id: str | None = ...,
        policy_version: int | None = ...,
        prompts: _Iterable[Prompt | _Mapping] | None = ...,
        group_size: int | None = ...,
        sampling: Sampling | _Mapping | None = ...,
        deadline_ms: int | None = ...,
        retry_after_s: float | None = ...,
        message: str | None = ...,
        policy: PolicyState | _Mapping | None = ...,
    ) -> None: ...

class Completion(_message.Message):
    __slots__ = ("logprobs", "reported_reward", "token_ids")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_REWARD_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    reported_reward: float
    def __init__(
        self,
        token_ids: _Iterable[int] | None = ...,
        logprobs: _Iterable[float] | None = ...,
        reported_reward: float | None = ...,
    ) -> None: ...

class Group(_message.Message):
    __slots__ = ("completions", "prompt_index")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    def __init__(
        self,
        prompt_index: int | None = ...,
        completions: _Iterable[Completion | _Mapping] | None = ...,
    ) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("auth", "generation_s", "groups", "lease_id", "policy_version")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_S_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    lease_id: str
    policy_version: int
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    generation_s: float
    def __init__(
        self,
        auth: Auth | _Mapping | None = ...,
        lease_id: str | None = ...,
        policy_version: int | None = ...,
        groups: _Iterable[Group | _Mapping] | None = ...,
        generation_s: float | None = ...,
    ) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("accepted_groups", "message", "policy", "rewards", "status")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    status: SubmitStatus
    accepted_groups: int
    rewards: _containers.RepeatedCompositeFieldContainer[GroupRewards]
    message: str
    policy: PolicyState
    def __init__(
        self,
        status: SubmitStatus | str | None = ...,
        accepted_groups: int | None = ...,
        rewards: _Iterable[GroupRewards | _Mapping] | None = ...,
        message: str | None = ...,
        policy: PolicyState | _Mapping | None = ...,
    ) -> None: ...

class GroupRewards(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rewards: _Iterable[float] | None = ...) -> None: ...

class TrainBatchRequest(_message.Message):
    __slots__ = ("auth", "step")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    step: int
    def __init__(self, auth: Auth | _Mapping | None = ..., step: int | None = ...) -> None: ...

class TrainGroup(_message.Message):
    __slots__ = ("completions", "policy_version", "prompt_index", "prompt_token_ids", "rewards")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    policy_version: int
    def __init__(
        self,
        prompt_index: int | None = ...,
        prompt_token_ids: _Iterable[int] | None = ...,
        completions: _Iterable[Completion | _Mapping] | None = ...,
        rewards: _Iterable[float] | None = ...,
        policy_version: int | None = ...,
    ) -> None: ...

class TrainBatchReply(_message.Message):
    __slots__ = ("groups", "message", "policy", "retry_after_s", "status", "step")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    status: BatchStatus
    step: int
    groups: _containers.RepeatedCompositeFieldContainer[TrainGroup]
    retry_after_s: float
    message: str
    policy: PolicyState
    def __init__(
        self,
        status: BatchStatus | str | None = ...,
        step: int | None = ...,
        groups: _Iterable[TrainGroup | _Mapping] | None = ...,
        retry_after_s: float | None = ...,
        message: str | None = ...,
        policy: PolicyState | _Mapping | None = ...,
    ) -> None: ...

class StepReport(_message.Message):
    __slots__ = ("auth", "metrics", "step", "weight_hash")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: str | None = ..., value: float | None = ...) -> None: ...

    AUTH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_HASH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    step: int
    weight_hash: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(
        self,
        auth: Auth | _Mapping | None = ...,
        step: int | None = ...,
        weight_hash: str | None = ...,
        metrics: _Mapping[str, float] | None = ...,
    ) -> None: ...

class StepReply(_message.Message):
    __slots__ = ("message", "policy_version", "status")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: StepStatus
    policy_version: int
    message: str
    def __init__(
        self,
        status: StepStatus | str | None = ...,
        policy_version: int | None = ...,
        message: str | None = ...,
    ) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("auth", "reason")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    reason: str
    def __init__(self, auth: Auth | _Mapping | None = ..., reason: str | None = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ("returned_prompts",)
    RETURNED_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    returned_prompts: int
    def __init__(self, returned_prompts: int | None = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ("auth",)
    AUTH_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    def __init__(self, auth: Auth | _Mapping | None = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status_json",)
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status_json: str
    def __init__(self, status_json: str | None = ...) -> None: ...

class WeightRequest(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: int | None = ...) -> None: ...

class WeightChunk(_message.Message):
    __slots__ = ("data", "error", "offset", "policy_version", "sha256", "total_bytes")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    offset: int
    data: bytes
    total_bytes: int
    sha256: str
    error: str
    def __init__(
        self,
        policy_version: int | None = ...,
        offset: int | None = ...,
        data: bytes | None = ...,
        total_bytes: int | None = ...,
        sha256: str | None = ...,
        error: str | None = ...,
    ) -> None: ...
