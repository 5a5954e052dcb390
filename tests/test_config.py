"""The configuration loader (docs/configuration.md)."""

from __future__ import annotations

import logging

import pytest

from gateway.config import ConfigError, load_settings

BASE = {"JWT_SECRET_KEY": "s3cret-" + "x" * 32}


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


@pytest.mark.parametrize(
    ("value", "log_format"),
    [(None, "text"), ("", "text"), ("text", "text"), ("json", "json"), (" JSON ", "json")],
)
def test_log_formats(value, log_format):
    env = BASE if value is None else {**BASE, "LOG_FORMAT": value}
    assert load_settings(env).log_format == log_format


@pytest.mark.parametrize("value", ["xml", "logfmt", "json lines"])
def test_unknown_log_format_is_refused(value):
    with pytest.raises(ConfigError, match="LOG_FORMAT must be one of text, json"):
        load_settings({**BASE, "LOG_FORMAT": value})


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


def test_short_secret_is_refused():
    # An HS256 key shorter than 32 bytes can be guessed offline from one token.
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY must be at least 32 bytes"):
        load_settings({"JWT_SECRET_KEY": "x" * 31})
    assert load_settings({"JWT_SECRET_KEY": "x" * 32}).jwt_secret_key == "x" * 32


def test_limit_defaults_match_the_docs():
    settings = load_settings(BASE)
    assert settings.max_json_depth == 32
    assert settings.ring_buffer_bytes == 1 << 20
    assert str(settings.login_rate_limit) == "10/minute"
    assert str(settings.publish_rate_limit) == "100/second"
    assert settings.max_topics == 10000
    assert settings.max_topics_per_user == 100
    assert settings.max_subscriptions_per_connection == 100
    assert settings.max_connections_per_user == 20


@pytest.mark.parametrize(
    ("value", "count", "period"),
    [("5/second", 5, 1), ("20 per minute", 20, 60), ("3/HOURS", 3, 3600)],
)
def test_rates_are_parsed(value, count, period):
    rate = load_settings({**BASE, "PUBLISH_RATE_LIMIT": value}).publish_rate_limit
    assert (rate.count, rate.period) == (count, period)


@pytest.mark.parametrize("name", ["LOGIN_RATE_LIMIT", "PUBLISH_RATE_LIMIT"])
def test_zero_rate_turns_the_limit_off(name):
    settings = load_settings({**BASE, name: "0"})
    assert getattr(settings, name.lower()) is None


@pytest.mark.parametrize("value", ["10", "ten/minute", "10/fortnight", "-1/second"])
def test_bad_rates_name_the_variable(value):
    with pytest.raises(ConfigError, match="LOGIN_RATE_LIMIT"):
        load_settings({**BASE, "LOGIN_RATE_LIMIT": value})


@pytest.mark.parametrize(
    "name",
    [
        "MAX_JSON_DEPTH",
        "RING_BUFFER_BYTES",
        "MAX_TOPICS",
        "MAX_TOPICS_PER_USER",
        "MAX_SUBSCRIPTIONS_PER_CONNECTION",
        "MAX_CONNECTIONS_PER_USER",
    ],
)
def test_bad_limits_name_the_variable(name):
    with pytest.raises(ConfigError, match=name):
        load_settings({**BASE, name: "-1"})


def test_a_json_depth_orjson_could_not_write_back_is_refused():
    # orjson writes at most 254 levels: a deeper limit would accept what it cannot store.
    with pytest.raises(ConfigError, match="MAX_JSON_DEPTH must be <= 250"):
        load_settings({**BASE, "MAX_JSON_DEPTH": "255"})
    assert load_settings({**BASE, "MAX_JSON_DEPTH": "250"}).max_json_depth == 250
