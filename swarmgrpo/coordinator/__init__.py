"""The run's coordinator: config, prompt stream, leases, reward re-verification, staleness bound,
node registry, durable state (SQLite, WAL), and the gRPC + HTTP faces. Components here never call
each other's internals: `server.py` wires the store, the service and the HTTP side together."""
