"""The failures a model call is expected to have, and how a page names them.

A homepage answers these by degrading (the ranker) or by the popularity fallback, counted as
model failures. Anything else raised on the request path is a bug: the page still falls back
(availability), but it is logged with its traceback and counted apart
(``marquee_homepage_fallbacks_total{kind="internal"}``).
"""

from __future__ import annotations

import grpc
import tensorflow as tf

from serving.models.breaker import CircuitOpen
from serving.models.query import ModelMismatch, NoPushedModel
from serving.models.tf_serving_client import ServingError


class ModelUnavailable(RuntimeError):
    """No model can answer (nothing pushed or loadable, a version not complete yet)."""


class DeadlineExceeded(TimeoutError):
    """A stage of the request took longer than its deadline or the request's budget."""


class NoCandidates(RuntimeError):
    """No candidate source answered anything (the popularity fallback answers instead)."""


MODEL_ERRORS: tuple[type[BaseException], ...] = (
    ServingError, CircuitOpen, ModelMismatch, NoPushedModel, ModelUnavailable, DeadlineExceeded,
    NoCandidates, TimeoutError, OSError, grpc.RpcError, tf.errors.OpError)


def describe(e: BaseException) -> str:
    """The failure as a page shows it to any client: its kind and cause, never the model
    server's address or its raw details (those go to the log)."""
    if isinstance(e, ServingError):
        return f"{type(e).__name__}: {e.rpc} {e.model!r}: {e.code.name}"
    if isinstance(e, grpc.RpcError):
        return f"{type(e).__name__}: model server call failed"
    return f"{type(e).__name__}: {e}"
