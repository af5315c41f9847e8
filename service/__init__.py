"""The gRPC server: a thin servicer over a transport-independent recommendation core."""
