"""Server interceptors: the one place where domain errors become gRPC status codes (with the
metrics and the access log, which need that status), and API-key authentication."""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from recsvc.access import ROLES, ApiKeys
from recsvc.errors import (
    AlreadyExists,
    BadInput,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RecsvcError,
    Unauthenticated,
    Unavailable,
)
from recsvc.service.observability import Metrics

log = logging.getLogger(__name__)
access_log = logging.getLogger("recsvc.access")

STATUS_OF: dict[type[RecsvcError], grpc.StatusCode] = {
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,  # before its base class, InvalidArgument
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}
REQUEST_ID_KEY = "x-request-id"
Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_for(error: RecsvcError) -> grpc.StatusCode:
    for error_type, code in STATUS_OF.items():
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def _wrap(handler: grpc.RpcMethodHandler, behaviour: Behaviour) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class WrappingInterceptor:
    """Intercepts every unary call of a method by wrapping the method's handler once, when it
    is registered (see WrappedRegistration). Per-call facts come from the context."""

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class WrappedRegistration:
    """Stands in for the server while a generated `add_*Servicer_to_server` registers its
    methods, and registers each method's handler wrapped by `interceptors` (the first one
    outermost) on the real server.

    The same as grpc.aio's server interceptors, without their cost: those run a chain of
    coroutines on every call to find the handler (7% fewer calls per second for one
    pass-through interceptor on the no-op server, docs/BENCHMARKS.md); this wraps once."""

    def __init__(
        self,
        server: grpc.aio.Server,
        interceptors: list[WrappingInterceptor],
        replacing: dict[str, grpc.RpcMethodHandler] | None = None,
    ) -> None:
        self.server = server
        self.interceptors = interceptors
        # Handlers by full method name that stand in for the generated ones (wire handlers).
        self.replacing = replacing or {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: generated code registers the same methods by name just after."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {}
        for name, handler in handlers.items():
            handler = self.replacing.get(f"/{service}/{name}", handler)
            for interceptor in reversed(self.interceptors):
                if handler.unary_unary is not None:
                    handler = interceptor.wrap(f"/{service}/{name}", handler)
            wrapped[name] = handler
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self.server.add_registered_method_handlers(service, wrapped)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return ""


class ErrorMappingInterceptor(WrappingInterceptor):
    """Turns RecsvcError into its status, anything unexpected into INTERNAL (logged with a
    traceback); times every call, counts it by status, and writes one JSON access-log line.

    A call that is logged (an access-log line, or an error) gets a request id, taken from
    `x-request-id` metadata or made, and sent back in trailing metadata. A call that leaves no
    log line gets none: an id that no log line carries would identify nothing, and reading
    metadata and sending a trailer cost both sides time on every call."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)

    def _request_id(self, context: grpc.aio.ServicerContext) -> str:
        # Unique per process and cheap: a random prefix and a counter.
        request_id = _metadata(context, REQUEST_ID_KEY)[:64] or (
            f"{self._prefix}-{next(self._counter):x}"
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        return request_id

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behaviour = handler.unary_unary
        method = full_method.rsplit("/", 1)[-1]
        metrics = self.metrics

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            logged = access_log.isEnabledFor(logging.INFO)
            request_id = self._request_id(context) if logged else ""
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except (RecsvcError, BadInput) as exc:
                code = status_for(exc)
                request_id = request_id or self._request_id(context)
                await context.abort(code, str(exc))
            except Exception:
                code = grpc.StatusCode.INTERNAL
                request_id = request_id or self._request_id(context)
                log.exception("unexpected error in %s (request %s)", method, request_id)
                await context.abort(code, f"internal error (request {request_id})")
            finally:
                seconds = time.perf_counter() - started
                if metrics is not None:
                    metrics.observe(method, code.name, seconds)
                if logged:
                    access_log.info(
                        json.dumps(
                            {
                                "request_id": request_id,
                                "method": method,
                                "code": code.name,
                                "ms": round(seconds * 1000, 3),
                                "peer": context.peer(),
                            }
                        )
                    )

        return _wrap(handler, guarded)


class AuthInterceptor(WrappingInterceptor):
    """`authorization: Bearer KEY` on every call of the services in `protected`; a method in
    `required_role` needs that role or a later one in ROLES. Health and reflection stay open
    for probes."""

    def __init__(self, keys: ApiKeys, protected: str, required_role: dict[str, str]) -> None:
        super().__init__()
        self.keys = keys
        self.protected = protected
        self.required_role = required_role

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if not full_method.startswith(f"/{self.protected}/"):
            return handler
        method = full_method.rsplit("/", 1)[-1]
        behaviour = handler.unary_unary
        needed = self.required_role.get(method, ROLES[0])
        allowed = set(ROLES[ROLES.index(needed) :])

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            header = _metadata(context, "authorization")
            key = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
            role = self.keys.role_of(key) if key else None
            if role is None:
                raise Unauthenticated("a valid API key is required: authorization: Bearer KEY")
            if role not in allowed:
                raise PermissionDenied(f"{method} needs an {needed} key or higher, not {role}")
            return await behaviour(request, context)

        return _wrap(handler, checked)
