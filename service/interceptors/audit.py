"""The audit interceptor: exactly one audit record per RPC, whatever happens to it.

Outermost in the chain, it sees every RPC of every service: the gateway's own, health
checks (Kubernetes probes included: they are calls like any other, and an audit log that
leaves some calls out cannot be reconciled with traffic) and reflection; calls to
methods that do not exist are answered UNIMPLEMENTED here and recorded too.

For each call it creates the CallState (request id, peer, start time) and sets
`current_call` for the call's duration, so that authentication, the servicer and the
router can fill it in; runs the call, sending the request id back as `x-request-id`;
and submits one record when it ends. Where the id travels:

- unary calls: always in the trailers, once, whatever the outcome. It is set on the
  context before the call runs, and rides with the status at no cost of its own; an
  abort that brings its own trailers replaces them, so every status built by
  service.errors.to_rpc_status carries the id too (refusals by authentication,
  admission and the decode guard, the servicer's errors, INTERNAL);
- streams: with the headers of the first response, or in the trailers when the stream
  ends before any response (to_rpc_status for an error, set here for an empty stream),
  and in the trailers of an error after responses too.

Never before the outcome is known: headers sent early would commit the call and keep
callers' gRPC retry policies from retrying an UNAVAILABLE.

The record, by how the call ended:

- a response, or a stream that ran to its end: the status the handler left (OK);
- an abort: the code the handler set, and the ErrorInfo reason of its status details
  (or the CallState's denied_reason for a refusal);
- cancellation by the client, the deadline or the server's shutdown: CANCELLED or
  DEADLINE_EXCEEDED (by the clock), recorded before the cancellation goes on;
- an unexpected exception: INTERNAL, and the caller gets INTERNAL too (logged here,
  never sent);
- a stream the server abandoned while it was blocked sending (the client went away):
  recorded by the context's done callback, which also backs up every other path.

The caller's `x-request-id` is used when it is at most 128 characters of
[A-Za-z0-9._:-]; otherwise a new uuid4 (hex) is made. The record never holds metadata
values, the request or the response: see service.audit.record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from service.audit.record import build_record
from service.audit.sink import AuditSink
from service.callstate import CallState, current_call, user_agent_from
from service.errors import REQUEST_ID_KEY, GatewayError, internal, to_rpc_status
from service.interceptors.wrapping import Context, WrappingInterceptor

log = logging.getLogger(__name__)

# Sees each finished call's audit record (metrics count the outcomes the log holds).
RecordObserver = Callable[[Mapping[str, Any], CallState], None]
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A cancellation this close to the deadline is the deadline's (the client's timer may
# fire a moment before the server's).
DEADLINE_TOLERANCE = 0.05


def _method_not_found() -> grpc.Status:
    return to_rpc_status(
        GatewayError(
            grpc.StatusCode.UNIMPLEMENTED,
            "METHOD_NOT_FOUND",
            "this server does not implement the method",
        )
    )


if TYPE_CHECKING:
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]


def request_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's x-request-id when it is sane, else a new uuid4 (hex)."""
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_KEY:
            if isinstance(value, str) and _SANE_REQUEST_ID.fullmatch(value):
                return value
            break
    return uuid.uuid4().hex


def error_reason(trailing: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The ErrorInfo reason of a status carried in grpc-status-details-bin, or ""."""
    for key, value in trailing or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return ""
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
    return ""


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # pragma: no cover - callbacks run on the loop
        return time.monotonic()


def _reset(token: Token[CallState | None]) -> None:
    # ValueError: an abandoned stream, closed later from another context.
    with contextlib.suppress(ValueError):
        current_call.reset(token)


class _Call:
    """One RPC being audited: its state, and the guarantee of exactly one record."""

    def __init__(
        self,
        sink: AuditSink,
        state: CallState,
        context: Context,
        streaming: bool,
        observers: Sequence[RecordObserver] = (),
    ):
        self.sink = sink
        self.observers = observers
        self.state = state
        self.context = context
        self.streaming = streaming
        self.wall_started = time.time()
        self.first_response_at: float | None = None
        self.finished = False

    def saw_response(self) -> None:
        if self.first_response_at is None:
            self.first_response_at = _loop_time()

    def finish(self, code: grpc.StatusCode, reason: str = "") -> None:
        if self.finished:
            return
        self.finished = True
        try:
            record = build_record(
                self.state,
                status=code.name,
                reason=reason,
                ended=_loop_time(),
                wall_started=self.wall_started,
                streaming=self.streaming,
                first_response_at=self.first_response_at,
            )
        except Exception:
            log.exception("the audit record could not be built")
            self.sink.lose("the audit record could not be built")
        else:
            self.sink.submit(record)
            for observe in self.observers:
                try:
                    observe(record, self.state)
                except Exception:
                    log.exception("a call observer failed")
        finally:
            self.sink.end_call()

    def finish_from_context(self, default: grpc.StatusCode) -> None:
        """Records the status the handler left on the context (`default` when none)."""
        code = cast("grpc.StatusCode | None", self.context.code()) or default
        reason = ""
        if code is not grpc.StatusCode.OK:
            reason = error_reason(self.context.trailing_metadata())
        self.finish(code, reason)

    def finish_interrupted(self) -> None:
        """Records a call that ended without finishing: cancelled, or out of time."""
        remaining = cast("float | None", self.context.time_remaining())
        if remaining is not None and remaining <= DEADLINE_TOLERANCE:
            self.finish(grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            self.finish(grpc.StatusCode.CANCELLED)


async def _send_request_id(context: Context, request_id: str) -> None:
    try:
        await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the call has ended already: what follows will show it
        log.debug("x-request-id not sent", extra={"fields": {"error": type(exc).__name__}})


class AuditInterceptor(WrappingInterceptor):
    def __init__(self, sink: AuditSink, observers: Sequence[RecordObserver] = ()) -> None:
        self.sink = sink
        self.observers = tuple(observers)

    # --- handlers ------------------------------------------------------------------------

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return self._unknown_method(method)

        async def resolved(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
            return handler

        return await super().intercept_service(resolved, handler_call_details)

    def _unknown_method(self, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """UNIMPLEMENTED, as gRPC would answer, but recorded. Any call shape fits a
        bidi-streaming handler that reads nothing."""

        async def unknown(requests: Any, context: Context) -> None:
            async def abort() -> None:
                await context.abort_with_status(_method_not_found())

            await self.around_unary(method, requests, context, abort)

        return grpc.stream_stream_rpc_method_handler(unknown)

    # --- one call --------------------------------------------------------------------------

    def _begin(self, method: str, context: Context, streaming: bool) -> _Call:
        try:
            peer = context.peer()
        except Exception:  # pragma: no cover - the peer is known while the call runs
            peer = ""
        state = CallState(
            request_id=request_id_from(context.invocation_metadata()),
            method=method,
            peer=peer if isinstance(peer, str) else "",
            user_agent=user_agent_from(context.invocation_metadata()),
            started=_loop_time(),
        )
        call = _Call(self.sink, state, context, streaming, self.observers)
        self.sink.begin_call()
        context.add_done_callback(cast(Any, lambda _context: call.finish_interrupted()))
        return call

    @contextlib.asynccontextmanager
    async def _outcome(self, call: _Call, method: str, context: Context) -> AsyncIterator[None]:
        """Runs the call's body with `current_call` set and records how it ended.

        GeneratorExit (grpc abandoned a stream while sending) passes through unrecorded:
        the call's outcome is known only when it has ended, so the done callback has it.
        """
        token = current_call.set(call.state)
        try:
            yield
        except grpc.aio.AbortError:
            call.finish_from_context(grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:
            call.finish_interrupted()
            raise
        except Exception:
            log.exception("unexpected error", extra={"fields": {"method": method[:256]}})
            call.finish(grpc.StatusCode.INTERNAL, "INTERNAL")
            await context.abort_with_status(to_rpc_status(internal()))
        else:
            call.finish_from_context(grpc.StatusCode.OK)
        finally:
            _reset(token)

    async def around_unary(
        self, method: str, request: Any, context: Context, proceed: Callable[[], Awaitable[Any]]
    ) -> Any:
        call = self._begin(method, context, streaming=False)
        # In the trailers, with the status: no batch of its own, and nothing is sent before
        # the outcome (callers' own gRPC retry policies can still retry an UNAVAILABLE).
        # An abort that brings trailers replaces these; to_rpc_status puts the id in them.
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.state.request_id),))
        async with self._outcome(call, method, context):
            return await proceed()

    async def around_stream(
        self,
        method: str,
        request: Any,
        context: Context,
        proceed: Callable[[], AsyncIterator[Any]],
    ) -> AsyncIterator[Any]:
        call = self._begin(method, context, streaming=True)
        async with self._outcome(call, method, context):
            sent = False
            async for item in proceed():
                if not sent:
                    await _send_request_id(context, call.state.request_id)
                    sent = True
                call.saw_response()
                yield item
            if not sent:  # an empty stream: the id travels with the trailers
                context.set_trailing_metadata(((REQUEST_ID_KEY, call.state.request_id),))
