"""The operator console: recsvc's web pages for the marketing and operations team, on the same
library as the gRPC service (a layer of its own beside service/, not on top of it)."""
