"""Per-app objects kept in `app.extensions`, reached through small accessors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flask import current_app

from gateway.accounts.store import UserStore
from gateway.brokers import Broker
from gateway.config import Settings
from gateway.guards.access import Roles
from gateway.metrics import Sampler
from gateway.transport.registry import Registry

EXTENSION = "gateway"


@dataclass
class GatewayState:
    """Everything one gateway app owns."""

    settings: Settings
    broker: Broker
    users: UserStore
    registry: Registry
    roles: Roles
    sampler: Sampler
    started_at: float = field(default_factory=time.monotonic)


def _state() -> GatewayState:
    return current_app.extensions[EXTENSION]


def get_settings() -> Settings:
    """Return the current app's Settings."""
    return _state().settings


def get_broker() -> Broker:
    """Return the current app's broker."""
    return _state().broker


def get_user_store() -> UserStore:
    """Return the current app's user store."""
    return _state().users


def get_registry() -> Registry:
    """Return the current app's WebSocket registry."""
    return _state().registry


def get_roles() -> Roles:
    """Return the current app's Roles (who is an admin)."""
    return _state().roles


def get_sampler() -> Sampler:
    """Return the current app's metrics Sampler (its gauges)."""
    return _state().sampler


def uptime_seconds() -> int:
    """Return whole seconds since the app was created."""
    return int(time.monotonic() - _state().started_at)
