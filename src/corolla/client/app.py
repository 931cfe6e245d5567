"""ClientApp: the code a node runs for each message kind.

Two ways to write one, built on the same handlers:

* decorated handlers, each ``(message, context) -> reply``::

      app = ClientApp()

      @app.train
      def train(msg, ctx):
          ...
          return msg.reply(arrays=new, metrics={"num-examples": n})

* a `Client` subclass with ``fit`` and ``evaluate`` for newcomers::

      app = ClientApp.from_client(lambda ctx: MyClient(ctx))

Middleware ("mods") wrap every handler: ``mod(msg, ctx, call_next) -> reply``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..message import EVALUATE, QUERY, TRAIN, Message
from ..records import Arrays, Config, Metrics, check_metrics
from .context import Context

Handler = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, Handler], Message]

NUM_EXAMPLES = "num-examples"


class ClientAppError(RuntimeError):
    """The app itself is wrong (no handler for a kind, a handler returned the wrong type)."""


class ClientApp:
    def __init__(self, mods: Sequence[Mod] = ()):
        self._handlers: dict[str, Handler] = {}
        self.mods: list[Mod] = list(mods)

    # -- registration -------------------------------------------------------
    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Register a handler for any message kind, e.g. ``@app.handler("secagg.share")``."""

        def register(fn: Handler) -> Handler:
            if kind in self._handlers:
                raise ClientAppError(f"a handler for {kind!r} is already registered")
            self._handlers[kind] = fn
            return fn

        return register

    def _decorator(self, kind: str, fn: Handler | None) -> Any:
        return self.handler(kind) if fn is None else self.handler(kind)(fn)

    def train(self, fn: Handler | None = None) -> Any:
        return self._decorator(TRAIN, fn)

    def evaluate(self, fn: Handler | None = None) -> Any:
        return self._decorator(EVALUATE, fn)

    def query(self, fn: Handler | None = None) -> Any:
        return self._decorator(QUERY, fn)

    @property
    def kinds(self) -> list[str]:
        return list(self._handlers)

    # -- dispatch -----------------------------------------------------------
    def __call__(self, message: Message, context: Context) -> Message:
        """Run the handler for `message.kind` through the mods. Exceptions propagate:
        the runtime turns them into error replies."""
        handler = self._handlers.get(message.kind)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise ClientAppError(
                f"this ClientApp has no handler for message kind {message.kind!r} (it handles: {known}); "
                f"register one with @app.{message.kind}"
                if message.kind in (TRAIN, EVALUATE, QUERY)
                else f"this ClientApp has no handler for message kind {message.kind!r} (it handles: {known}); "
                f"register one with @app.handler({message.kind!r})"
            )
        call = _checked(handler, message.kind)
        for mod in reversed(self.mods):
            call = _wrap(mod, call)
        return call(message, context)

    # -- class-style API ------------------------------------------------------
    @classmethod
    def from_client(cls, client_fn: Callable[[Context], "Client"], mods: Sequence[Mod] = ()) -> "ClientApp":
        """Build an app from a factory of `Client` objects (one made per message)."""
        app = cls(mods)

        @app.train
        def _train(msg: Message, ctx: Context) -> Message:
            client = client_fn(ctx)
            out = client.fit(msg.content.arrays, msg.content.config)
            if not (isinstance(out, tuple) and len(out) == 3):
                raise ClientAppError("Client.fit must return (arrays, num_examples, metrics)")
            arrays, n, metrics = out
            if not isinstance(arrays, Arrays):
                arrays = Arrays.from_numpy(list(arrays), list(msg.content.arrays.keys()))
            return msg.reply(
                arrays=arrays, metrics={**check_metrics(metrics or {}, "Client.fit"), NUM_EXAMPLES: int(n)}
            )

        @app.evaluate
        def _evaluate(msg: Message, ctx: Context) -> Message:
            client = client_fn(ctx)
            out = client.evaluate(msg.content.arrays, msg.content.config)
            if not (isinstance(out, tuple) and len(out) == 3):
                raise ClientAppError("Client.evaluate must return (loss, num_examples, metrics)")
            loss, n, metrics = out
            return msg.reply(
                metrics={**check_metrics(metrics or {}, "Client.evaluate"), "loss": float(loss), NUM_EXAMPLES: int(n)}
            )

        return app


def _wrap(mod: Mod, call_next: Handler) -> Handler:
    return lambda msg, ctx: mod(msg, ctx, call_next)


def _checked(handler: Handler, kind: str) -> Handler:
    def call(msg: Message, ctx: Context) -> Message:
        reply = handler(msg, ctx)
        if not isinstance(reply, Message):
            raise ClientAppError(
                f"the {kind!r} handler {getattr(handler, '__name__', handler)!r} returned "
                f"{type(reply).__name__}; it must return a Message (use `msg.reply(...)`)"
            )
        return reply

    return call


class Client:
    """The simple API: override `fit` and/or `evaluate`."""

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        raise ClientAppError(f"{type(self).__name__} does not implement fit(arrays, config)")

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        raise ClientAppError(f"{type(self).__name__} does not implement evaluate(arrays, config)")


def run_message(app: ClientApp, msg: Message, ctx: Context) -> Message:
    """Run one message through the app; an exception becomes an error reply with its traceback."""
    try:
        reply = app(msg, ctx)
    except BaseException as e:  # noqa: BLE001 - a node's failure must never take the runtime down
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        reply = msg.error_reply("exception", f"{type(e).__name__}: {e}\n{tb}")
    # the runtime, not the app, decides the routing metadata
    reply.metadata.src = msg.metadata.dst
    reply.metadata.dst = msg.metadata.src
    reply.metadata.reply_to = msg.metadata.message_id
    reply.metadata.run_id = msg.metadata.run_id
    reply.metadata.round = msg.metadata.round
    return reply
