"""Domain errors. The transport layer maps each to one gRPC status; the CLI to one exit code."""


class RecsvcError(Exception):
    """Base of every error raised on purpose by recsvc."""


class InvalidArgument(RecsvcError):
    """The caller sent a request that can never succeed as written."""


class AlreadyExists(InvalidArgument):
    """The request would create something that exists already (a campaign's name)."""


class NotFound(RecsvcError):
    """The request names something the current model does not know."""


class Unavailable(RecsvcError):
    """The service cannot answer yet (e.g. no model has loaded)."""


class StoreUnavailable(Unavailable):
    """The event store cannot be reached, or did not answer in time: worth a retry later."""


class BadInput(RecsvcError):
    """Input data or configuration cannot be used at all (CLI exit code 2)."""


class PublishFailed(RecsvcError):
    """A new version could not be written (a full disk, an I/O error); the current one stays."""


class QualityGateRefused(RecsvcError):
    """The new model is worse than the published one beyond tolerance (CLI exit code 3)."""


class Unauthenticated(RecsvcError):
    """The call carries no valid API key."""


class PermissionDenied(RecsvcError):
    """The key is valid but may not make this call (an admin call with a client key)."""
