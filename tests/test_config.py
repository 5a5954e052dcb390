"""The configuration loader (SPEC §1)."""

from __future__ import annotations

import logging

import pytest

from gateway.config import ConfigError, load_settings

BASE = {"JWT_SECRET_KEY": "s3cret"}


def test_defaults_match_the_spec():
    settings = load_settings(BASE)
    assert settings.allowed_origins == ("*",)
    assert settings.allowed_methods == ("*",)
    assert settings.log_level == logging.INFO
    assert settings.jwt_expires_minutes == 1440
    assert settings.ring_buffer_size == 100
    assert settings.subscriber_queue_size == 100
    assert settings.heartbeat_interval == 30
    assert settings.max_message_bytes == 65536
    assert settings.database_url is None
    assert settings.broker_url == "memory://"
    assert settings.write_timeout_seconds == 10
    assert settings.shutdown_grace_seconds == 10


@pytest.mark.parametrize("secret", [None, "", "   "])
def test_missing_secret_is_refused(secret):
    env = {} if secret is None else {"JWT_SECRET_KEY": secret}
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        load_settings(env)


@pytest.mark.parametrize(
    "name",
    [
        "RING_BUFFER_SIZE",
        "SUBSCRIBER_QUEUE_SIZE",
        "HEARTBEAT_INTERVAL",
        "MAX_MESSAGE_BYTES",
        "JWT_EXPIRES_MINUTES",
        "WRITE_TIMEOUT_SECONDS",
        "SHUTDOWN_GRACE_SECONDS",
    ],
)
@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_bad_numbers_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({**BASE, name: value})


def test_zero_heartbeat_turns_heartbeats_off():
    assert load_settings({**BASE, "HEARTBEAT_INTERVAL": "0"}).heartbeat_interval == 0


@pytest.mark.parametrize(
    ("value", "level"),
    [("debug", 10), ("INFO", 20), ("warn", 30), ("warning", 30), ("error", 40)],
)
def test_log_levels(value, level):
    assert load_settings({**BASE, "LOG_LEVEL": value}).log_level == level


def test_unknown_log_level_is_refused():
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        load_settings({**BASE, "LOG_LEVEL": "loud"})


def test_cors_lists_are_split_and_trimmed():
    settings = load_settings(
        {
            **BASE,
            "ALLOWED_CORS_ORIGIN": "https://a.example, https://b.example",
            "ALLOWED_CORS_METHOD": "GET,POST",
        }
    )
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.allowed_methods == ("GET", "POST")
    assert settings.origin_allowed("https://b.example")
    assert settings.origin_allowed(None)
    assert not settings.origin_allowed("https://evil.example")


def test_unsupported_broker_is_refused_by_name():
    with pytest.raises(ConfigError, match="BROKER_URL"):
        load_settings({**BASE, "BROKER_URL": "nats://localhost"})
