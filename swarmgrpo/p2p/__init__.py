"""The peer-to-peer layer: the libp2p host, the compressed all-reduce of gradients (with PowerSGD
and its compressions), weight files and training state, and their transfer between peers. The node
daemon and the coordinator use it; it imports neither."""
