"""A volunteer's node.

daemon        `swarmgrpo node`: join, heartbeats, DHT announcements, leave; picks the role object
options       NodeOptions, the one source of the command's defaults
joined        what the daemon hands its role (Joined) and what heartbeats report (Progress)
rollout_role  lease → generate → submit
train_role    TrainBatch → gradient → all-reduce → step → publish → report
weight_sync   the run's published weights, and a trainer's exact training state
engines/      rollout engines (vLLM, transformers)
solo, evaluate  `swarmgrpo train` and `swarmgrpo eval`
"""
