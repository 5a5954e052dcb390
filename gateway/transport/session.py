"""One WebSocket client's session: its commands, its subscriptions and its outbox.

A Session is the broker's Subscriber for that connection. It turns decoded commands into
broker calls and replies, and keeps docs/delivery.md's promises at the edges of a subscription:
the `ack` comes before the replay, the replay before live events, and no event of a topic
arrives after its `unsubscribe` ack.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from gateway import metrics, protocol
from gateway.brokers import (
    Broker,
    BrokerUnavailable,
    Event,
    Publish,
    Send,
    Subscription,
    TopicNotFound,
)
from gateway.config import Rate
from gateway.guards import access
from gateway.guards.access import NO_ADMINS, Roles
from gateway.guards.rates import TokenBucket
from gateway.protocol import ProtocolError
from gateway.transport import wsframes
from gateway.transport.delivery import Holding
from gateway.transport.outbox import Outbox

log = logging.getLogger("gateway.ws")

# What the broker raises for a client's mistake or its own outage: an `error` frame each.
_REFUSALS = (BrokerUnavailable, access.Forbidden, TopicNotFound)


class Session:
    """The command handler and Subscriber of one WebSocket connection."""

    # One per open connection, most of them idle: slots keep each a few hundred bytes smaller.
    __slots__ = (
        "conn_id",
        "user_id",
        "outbox",
        "_broker",
        "_max_json_depth",
        "_max_subscriptions",
        "_publish_rate",
        "_bucket",
        "_roles",
        "_lock",
        "_holding",
        "__weakref__",
    )

    def __init__(
        self,
        conn_id: str,
        user_id: str,
        broker: Broker,
        outbox: Outbox,
        max_json_depth: int,
        max_subscriptions: int = 0,
        publish_rate: Rate | None = None,
        roles: Roles | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.user_id = user_id
        self.outbox = outbox
        self._broker = broker
        self._max_json_depth = max_json_depth
        self._max_subscriptions = max_subscriptions  # 0: no limit
        # PUBLISH_RATE_LIMIT per connection, in process: a burst of the rate's count.
        self._publish_rate = publish_rate
        self._bucket = TokenBucket(publish_rate) if publish_rate is not None else None
        self._roles = roles or NO_ADMINS
        self._lock = threading.Lock()
        # Topics whose subscribe is in flight: live events wait here until the ack and the
        # replay are queued, so that they follow the replay with no gap and no duplicate.
        self._holding = Holding()

    # Subscriber (called by the broker, under its lock: must not block) -----------------

    def deliver(self, event: Event) -> Send:
        """Queue one live event for this connection; return the socket write due now."""
        if self._holding:
            with self._lock:
                if self._holding.hold(event):
                    return None
        return self.outbox.queue_event(event.topic, event.seq, event.wire)

    def topic_deleted(self, topic: str) -> Send:
        """Tell the client that a topic it subscribed to is gone."""
        return self.outbox.queue(wsframes.text(protocol.topic_deleted(topic)))

    def access_revoked(self, topic: str) -> Send:
        """Tell the client that it may no longer read a topic it subscribed to."""
        return self.outbox.queue(wsframes.text(protocol.access_revoked(topic)))

    # Commands ------------------------------------------------------------------------

    def handle(self, data: str | bytes) -> None:
        """Serve one client frame; protocol mistakes become `error` frames."""
        self.handle_many([data])

    def handle_many(self, messages: Sequence[str | bytes]) -> None:
        """Serve client frames in order; replies go out in the same order.

        Consecutive publishes are sent to the broker together (`publish_many`): one round
        trip to Redis for what a pipelining client sent in one read.
        """
        batch: list[protocol.Publish] = []
        for data in messages:
            if not self.outbox.is_open:
                break
            command = None
            try:
                command = protocol.decode(data, self._max_json_depth)
                if isinstance(command, protocol.Publish):
                    batch.append(self._admitted(command))
                    continue
                self._publish_batch(batch)
                self._guarded(command, self._dispatch)
            except ProtocolError as exc:
                self._publish_batch(batch)
                self._refuse(exc)
            except Exception:
                self._publish_batch(batch)
                self._internal_error(command)
        self._publish_batch(batch)

    def _guarded(self, command: protocol.Command, serve: Callable[[protocol.Command], None]):
        """Run `serve(command)`; broker and access failures become ProtocolErrors."""
        try:
            serve(command)
        except _REFUSALS as exc:
            raise self._refusal(exc, command) from None

    def _refusal(self, exc: Exception, command: protocol.Command) -> ProtocolError:
        """The `error` frame that tells the client why the broker refused `command`."""
        if isinstance(exc, BrokerUnavailable):
            log.error("broker_unavailable conn=%s error=%s", self.conn_id, exc)
            return ProtocolError(
                protocol.INTERNAL,
                "the message broker is unavailable; try again shortly",
                command.request_id,
            )
        if isinstance(exc, access.Forbidden):
            return ProtocolError(protocol.FORBIDDEN, str(exc), command.request_id)
        return _not_found(command.topic, command.request_id)

    def _refuse(self, exc: ProtocolError) -> None:
        log.info(
            "ws_rejected conn=%s code=%s request_id=%s message=%s",
            self.conn_id,
            exc.code,
            exc.request_id,
            exc.message,
        )
        self._reply(protocol.error(exc.code, exc.message, exc.request_id))

    def _internal_error(self, command: protocol.Command | None) -> None:
        # A fault of ours must not end the connection without a word: the client is told
        # (INTERNAL) and may go on; the traceback is in the log.
        log.exception("ws_internal_error conn=%s", self.conn_id)
        request_id = command.request_id if command is not None else None
        self._reply(protocol.error(protocol.INTERNAL, "internal server error", request_id))

    def close(self) -> None:
        """Drop every subscription of this connection."""
        self._broker.unsubscribe_all(self)

    def _dispatch(self, command: protocol.Command) -> None:
        if isinstance(command, protocol.Subscribe):
            self._subscribe(command)
        elif isinstance(command, protocol.Unsubscribe):
            self._unsubscribe(command)
        else:
            self._reply(protocol.pong(command.request_id))

    def _admitted(self, command: protocol.Publish) -> protocol.Publish:
        """Return `command` if the rate limit lets it through; raise RATE_LIMITED if not."""
        if self._bucket is not None and (wait := self._bucket.take()):
            metrics.rate_limited("publish_ws")
            raise ProtocolError(
                protocol.RATE_LIMITED,
                f"publishing faster than {self._publish_rate}; retry in {wait:.2f}s",
                command.request_id,
            )
        return command

    def _publish_batch(self, batch: list[protocol.Publish]) -> None:
        """Publish `batch` (then empty it) and reply to each command, in order."""
        if not batch:
            return
        commands = batch[:]
        batch.clear()
        if len(commands) == 1:
            self._one_publish(commands[0])
            return
        user, roles = self.user_id, self._roles
        requests = [
            # Encoded before the broker gives it a seq: a publish is all or nothing.
            Publish(
                command.topic,
                command.message_id,
                protocol.encode_payload(command.payload),
                publisher=user,
                check=access.check(access.PUBLISH, user, command.topic),
            )
            for command in commands
        ]
        try:
            results: list = self._broker.publish_many(requests)
        except Exception as exc:  # the broker is unavailable (or a fault): each one is told
            results = [exc] * len(commands)
        for command, result in zip(commands, results, strict=True):
            # Every command gets exactly one reply, whatever fails while answering it (the
            # admin lookup of a refusal reads the user store).
            try:
                if isinstance(result, access.Forbidden) and user and roles.is_admin(user):
                    self._one_publish(command)  # an admin may publish anywhere (docs/access.md)
                elif isinstance(result, _REFUSALS):
                    self._refuse(self._refusal(result, command))
                elif isinstance(result, Exception):
                    log.error("ws_internal_error conn=%s", self.conn_id, exc_info=result)
                    self._reply(
                        protocol.error(
                            protocol.INTERNAL, "internal server error", command.request_id
                        )
                    )
                else:
                    self._reply(protocol.ack(command.topic, command.request_id, result.seq))
            except Exception:
                self._internal_error(command)

    def _one_publish(self, command: protocol.Publish) -> None:
        try:
            self._guarded(command, self._publish)
        except ProtocolError as exc:
            self._refuse(exc)
        except Exception:
            self._internal_error(command)

    def _publish(self, command: protocol.Publish) -> None:
        # Encoded before the broker gives it a seq: a publish is all or nothing.
        payload = protocol.encode_payload(command.payload)
        event = access.run_as(
            access.PUBLISH,
            self.user_id,
            command.topic,
            self._roles,
            lambda check: self._broker.publish(
                command.topic, command.message_id, payload, publisher=self.user_id, check=check
            ),
        )
        self._reply(protocol.ack(command.topic, command.request_id, event.seq))

    def _subscribe(self, command: protocol.Subscribe) -> None:
        topic = command.topic
        following = self._broker.following(self)
        if topic in following:
            self._subscribe_again(command)
            return
        limit = self._max_subscriptions
        if limit and len(following) >= limit:
            raise ProtocolError(
                protocol.LIMIT_EXCEEDED,
                f"this connection already follows the maximum of {limit} topics",
                command.request_id,
            )
        with self._lock:
            self._holding.begin(topic)
        try:
            subscription = self._subscribe_checked(command)
        except BaseException as exc:
            with self._lock:
                self._holding.cancel(topic)
            if isinstance(exc, TopicNotFound):
                raise _not_found(topic, command.request_id) from None
            raise
        if command.since_seq is not None:
            metrics.resumed(subscription.recovered)
        outbox = self.outbox
        with self._lock:
            self._reply(_subscribe_ack(command, subscription))
            for event in subscription.replay:
                # Replayed events keep their timestamp and seq; `ts` is the time of sending.
                outbox.push_event(topic, event.seq, wsframes.text(protocol.event(event)))
            self._holding.release(
                topic,
                subscription.seq,
                lambda event: outbox.push_event(topic, event.seq, event.wire),
            )
        log.debug(
            "ws_subscribed conn=%s topic=%s last_n=%d replayed=%d client_id=%s",
            self.conn_id,
            topic,
            command.last_n,
            len(subscription.replay),
            command.client_id,
        )

    def _subscribe_again(self, command: protocol.Subscribe) -> None:
        """Acknowledge a subscribe to a topic already followed: no replay, nothing held.

        Live events of the subscription keep flowing while this runs; one that is still on
        its way from the broker (Redis) must not be mistaken for part of a replay.
        """
        try:
            subscription = self._subscribe_checked(command)
        except TopicNotFound:
            raise _not_found(command.topic, command.request_id) from None
        self._reply(_subscribe_ack(command, subscription))

    def _subscribe_checked(self, command: protocol.Subscribe) -> Subscription:
        """Subscribe if this user may read the topic (docs/access.md); raise Forbidden if not."""
        return access.run_as(
            access.SUBSCRIBE,
            self.user_id,
            command.topic,
            self._roles,
            lambda check: self._broker.subscribe(
                command.topic, self, command.last_n, command.since_seq, command.epoch, check
            ),
        )

    def _unsubscribe(self, command: protocol.Unsubscribe) -> None:
        try:
            self._broker.unsubscribe(command.topic, self)
        except TopicNotFound:
            raise _not_found(command.topic, command.request_id) from None
        self._reply(protocol.ack(command.topic, command.request_id))

    def _reply(self, body: bytes) -> None:
        self.outbox.push(wsframes.text(body))


def _subscribe_ack(command: protocol.Subscribe, subscription: Subscription) -> bytes:
    """Encode a subscribe's ack: the topic's seq and epoch, `recovered` for a resume."""
    extra: dict = {"epoch": subscription.epoch}
    if command.since_seq is not None:
        extra["recovered"] = subscription.recovered
    return protocol.ack(command.topic, command.request_id, subscription.seq, **extra)


def _not_found(topic: str, request_id: str | None) -> ProtocolError:
    return ProtocolError(protocol.TOPIC_NOT_FOUND, f"topic {topic!r} does not exist", request_id)
