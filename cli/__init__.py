"""The command line: the top layer, the one place that wires the library, training, the gRPC
service and the load tester together. `recsvc` runs recsvc.cli.main:main."""
