from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    STEP_PENDING: _ClassVar[StepStatus]
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
STEP_PENDING: StepStatus

class Auth(_message.Message):
    __slots__ = ("node_id", "public_key", "nonce", "timestamp_ms", "signature")
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
    def __init__(self, node_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., nonce: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("device", "device_name", "memory_bytes", "device_memory_bytes", "compute_capability", "fp8", "cpu_cores", "engines")
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
    def __init__(self, device: _Optional[str] = ..., device_name: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., device_memory_bytes: _Optional[int] = ..., compute_capability: _Optional[str] = ..., fp8: _Optional[bool] = ..., cpu_cores: _Optional[int] = ..., engines: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("auth", "protocol_version", "join_token", "capabilities", "roles", "peer_id", "peer_addrs", "software_version")
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
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., protocol_version: _Optional[int] = ..., join_token: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., roles: _Optional[_Iterable[_Union[Role, str]]] = ..., peer_id: _Optional[str] = ..., peer_addrs: _Optional[_Iterable[str]] = ..., software_version: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("node_id", "protocol_version", "run_id", "run_config_toml", "policy_version", "roles", "initial_peers", "heartbeat_interval_s")
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
    def __init__(self, node_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., run_id: _Optional[str] = ..., run_config_toml: _Optional[str] = ..., policy_version: _Optional[int] = ..., roles: _Optional[_Iterable[_Union[Role, str]]] = ..., initial_peers: _Optional[_Iterable[str]] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class WeightHolder(_message.Message):
    __slots__ = ("node_id", "peer_id", "peer_addrs", "policy_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    peer_addrs: _containers.RepeatedScalarFieldContainer[str]
    policy_version: int
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., peer_addrs: _Optional[_Iterable[str]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("auth", "policy_version", "activity", "tokens_per_s")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    policy_version: int
    activity: str
    tokens_per_s: float
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., policy_version: _Optional[int] = ..., activity: _Optional[str] = ..., tokens_per_s: _Optional[float] = ...) -> None: ...

class PolicyState(_message.Message):
    __slots__ = ("policy_version", "weight_hash", "holders", "max_staleness", "finished", "weight_hash_fp8", "weight_bytes", "weight_bytes_fp8", "state_hash", "state_bytes")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_HASH_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_HASH_FP8_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FP8_FIELD_NUMBER: _ClassVar[int]
    STATE_HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    weight_hash: str
    holders: _containers.RepeatedCompositeFieldContainer[WeightHolder]
    max_staleness: int
    finished: bool
    weight_hash_fp8: str
    weight_bytes: int
    weight_bytes_fp8: int
    state_hash: str
    state_bytes: int
    def __init__(self, policy_version: _Optional[int] = ..., weight_hash: _Optional[str] = ..., holders: _Optional[_Iterable[_Union[WeightHolder, _Mapping]]] = ..., max_staleness: _Optional[int] = ..., finished: _Optional[bool] = ..., weight_hash_fp8: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., weight_bytes_fp8: _Optional[int] = ..., state_hash: _Optional[str] = ..., state_bytes: _Optional[int] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("auth", "policy_version", "max_prompts", "wait_s")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    policy_version: int
    max_prompts: int
    wait_s: float
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., policy_version: _Optional[int] = ..., max_prompts: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "max_tokens", "seed")
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
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("prompt_index", "token_ids")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, prompt_index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class LeaseReply(_message.Message):
    __slots__ = ("status", "lease_id", "policy_version", "prompts", "group_size", "sampling", "deadline_ms", "retry_after_s", "message", "policy")
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
    def __init__(self, status: _Optional[_Union[LeaseStatus, str]] = ..., lease_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., group_size: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., deadline_ms: _Optional[int] = ..., retry_after_s: _Optional[float] = ..., message: _Optional[str] = ..., policy: _Optional[_Union[PolicyState, _Mapping]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("token_ids", "logprobs", "reported_reward")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_REWARD_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    reported_reward: float
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., reported_reward: _Optional[float] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("prompt_index", "completions")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    def __init__(self, prompt_index: _Optional[int] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("auth", "lease_id", "policy_version", "groups", "generation_s")
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
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., lease_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ..., generation_s: _Optional[float] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("status", "accepted_groups", "rewards", "message", "policy")
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
    def __init__(self, status: _Optional[_Union[SubmitStatus, str]] = ..., accepted_groups: _Optional[int] = ..., rewards: _Optional[_Iterable[_Union[GroupRewards, _Mapping]]] = ..., message: _Optional[str] = ..., policy: _Optional[_Union[PolicyState, _Mapping]] = ...) -> None: ...

class GroupRewards(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rewards: _Optional[_Iterable[float]] = ...) -> None: ...

class TrainBatchRequest(_message.Message):
    __slots__ = ("auth", "step", "failed_attempt", "missing_node_ids", "wait_s", "device")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MISSING_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    step: int
    failed_attempt: int
    missing_node_ids: _containers.RepeatedScalarFieldContainer[str]
    wait_s: float
    device: str
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., step: _Optional[int] = ..., failed_attempt: _Optional[int] = ..., missing_node_ids: _Optional[_Iterable[str]] = ..., wait_s: _Optional[float] = ..., device: _Optional[str] = ...) -> None: ...

class TrainGroup(_message.Message):
    __slots__ = ("prompt_index", "prompt_token_ids", "completions", "rewards", "policy_version")
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
    def __init__(self, prompt_index: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., rewards: _Optional[_Iterable[float]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("node_id", "peer_id", "peer_addrs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    peer_addrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., peer_addrs: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainBatchReply(_message.Message):
    __slots__ = ("status", "step", "groups", "retry_after_s", "message", "policy", "shard_index", "workers", "attempt")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    status: BatchStatus
    step: int
    groups: _containers.RepeatedCompositeFieldContainer[TrainGroup]
    retry_after_s: float
    message: str
    policy: PolicyState
    shard_index: int
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    attempt: int
    def __init__(self, status: _Optional[_Union[BatchStatus, str]] = ..., step: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[TrainGroup, _Mapping]]] = ..., retry_after_s: _Optional[float] = ..., message: _Optional[str] = ..., policy: _Optional[_Union[PolicyState, _Mapping]] = ..., shard_index: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ..., attempt: _Optional[int] = ...) -> None: ...

class StepReport(_message.Message):
    __slots__ = ("auth", "step", "weight_hash", "metrics", "attempt", "weight_hash_fp8", "set_aside_prompts", "weight_bytes", "weight_bytes_fp8", "state_hash", "state_bytes")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AUTH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_HASH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_HASH_FP8_FIELD_NUMBER: _ClassVar[int]
    SET_ASIDE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FP8_FIELD_NUMBER: _ClassVar[int]
    STATE_HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    step: int
    weight_hash: str
    metrics: _containers.ScalarMap[str, float]
    attempt: int
    weight_hash_fp8: str
    set_aside_prompts: _containers.RepeatedScalarFieldContainer[int]
    weight_bytes: int
    weight_bytes_fp8: int
    state_hash: str
    state_bytes: int
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., step: _Optional[int] = ..., weight_hash: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., attempt: _Optional[int] = ..., weight_hash_fp8: _Optional[str] = ..., set_aside_prompts: _Optional[_Iterable[int]] = ..., weight_bytes: _Optional[int] = ..., weight_bytes_fp8: _Optional[int] = ..., state_hash: _Optional[str] = ..., state_bytes: _Optional[int] = ...) -> None: ...

class StepReply(_message.Message):
    __slots__ = ("status", "policy_version", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: StepStatus
    policy_version: int
    message: str
    def __init__(self, status: _Optional[_Union[StepStatus, str]] = ..., policy_version: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("auth", "reason")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    reason: str
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ("returned_prompts",)
    RETURNED_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    returned_prompts: int
    def __init__(self, returned_prompts: _Optional[int] = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ("auth", "after_version", "wait_s")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    auth: Auth
    after_version: int
    wait_s: float
    def __init__(self, auth: _Optional[_Union[Auth, _Mapping]] = ..., after_version: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status_json",)
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status_json: str
    def __init__(self, status_json: _Optional[str] = ...) -> None: ...

class WeightRequest(_message.Message):
    __slots__ = ("policy_version", "format")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    format: str
    def __init__(self, policy_version: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class WeightChunk(_message.Message):
    __slots__ = ("policy_version", "offset", "data", "total_bytes", "sha256", "error")
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
    def __init__(self, policy_version: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AllReducePart(_message.Message):
    __slots__ = ("round_id", "phase", "part", "sender", "weight", "offset", "total_bytes", "data", "segment")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: int
    part: int
    sender: int
    weight: float
    offset: int
    total_bytes: int
    data: bytes
    segment: int
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[int] = ..., part: _Optional[int] = ..., sender: _Optional[int] = ..., weight: _Optional[float] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., segment: _Optional[int] = ...) -> None: ...

class AllReduceAck(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...
