"""The serving core, transport-free: what Recommend and the other calls compute, for the gRPC
service, the batch exports, audiences and the evaluation of what is served alike."""
