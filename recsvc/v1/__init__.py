"""recsvc.v1, the gRPC contract: the modules generated from protos/recsvc/v1/ (built into every
wheel by setup.py) and the call metadata that is part of the contract."""

# Calls carrying this metadata key are load-test traffic (`recsvc loadtest` sends it unless
# told --live): answered as usual, but never counted as experiment impressions, and their
# events are checked and not stored, so they reach neither reports nor training.
LOAD_TEST_METADATA_KEY = "x-recsvc-load-test"
