"""Accounts and tokens over REST (docs/rest-api.md): register, login, profile and token checks."""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import datetime

import jwt
import pytest

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
USER_FIELDS = {"id", "username", "email", "role", "created_at", "updated_at"}
HASH_MARKERS = ("scrypt:", "pbkdf2:", "$2b$", "$2a$", "$argon2")


def register(client, username, password="a good password", **extra):
    """POST /users/register with a JSON body."""
    return client.post(
        "/users/register", json={"username": username, "password": password, **extra}
    )


def login(client, username, password):
    """POST /users/login with a JSON body."""
    return client.post("/users/login", json={"username": username, "password": password})


def assert_error(response, status):
    """The response has `status` and the one error shape {"error": "<text>"}."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]


def assert_user(user, username, email=None, role="user"):
    """A user object has exactly the documented fields, UTC Z timestamps and no secret."""
    assert set(user) == USER_FIELDS
    assert isinstance(user["id"], str) and user["id"]
    assert user["username"] == username
    assert user["email"] == email
    assert user["role"] == role
    for key in ("created_at", "updated_at"):
        assert ISO_Z.fullmatch(user[key]), user[key]
        moment = datetime.fromisoformat(user[key].replace("Z", "+00:00"))
        assert abs(moment.timestamp() - time.time()) < 60


def assert_no_secret(response, password):
    """Neither the password nor anything that looks like its hash is in the body."""
    text = response.get_data(as_text=True)
    assert password not in text
    for marker in HASH_MARKERS:
        assert marker not in text
    assert not [key for key in keys_of(response.get_json()) if "pass" in key or "hash" in key]


def keys_of(value):
    """Every object key anywhere in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key.lower()
            yield from keys_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from keys_of(item)


def claims_of(token):
    """Decode a token without checking it, to look at its claims."""
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def forge(jwt_secret):
    """Sign a token like the gateway's own: forge(sub, exp_in=600, key=..., algorithm=...)."""

    def make(sub, exp_in=600, key=jwt_secret, algorithm="HS256", **extra):
        now = int(time.time())
        claims = {
            "sub": sub,
            "type": "access",
            "fresh": False,
            "jti": str(uuid.uuid4()),
            "iat": min(now, now + exp_in - 60),
            "nbf": min(now, now + exp_in - 60),
            "exp": now + exp_in,
            **extra,
        }
        return jwt.encode(claims, key, algorithm=algorithm)

    return make


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# --- register -------------------------------------------------------------------------------


def test_register_returns_201_with_user_and_token(client):
    response = register(client, "alice", "s3cret-password", email="alice@example.com")
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) >= {"status", "user", "token"}
    assert body["status"] == "registered"
    assert_user(body["user"], "alice", "alice@example.com")
    assert body["user"]["created_at"] == body["user"]["updated_at"]
    assert isinstance(body["token"], str) and body["token"].count(".") == 2
    assert_no_secret(response, "s3cret-password")


@pytest.mark.parametrize("email", ["absent", None])
def test_register_without_email_stores_null(client, email):
    extra = {} if email == "absent" else {"email": None}
    response = register(client, "noemail", **extra)
    assert response.status_code == 201
    assert response.get_json()["user"]["email"] is None


def test_register_gives_each_user_its_own_id(client):
    first = register(client, "one").get_json()["user"]["id"]
    second = register(client, "two").get_json()["user"]["id"]
    assert first != second


@pytest.mark.parametrize(
    "username",
    [
        "",
        "a" * 65,
        "with space",
        "tab\there",
        "bób",
        "名前",
        "slash/name",
        "semi;colon",
        "plus+",
        "trailing\n",
        "quote'",
        'dq"',
        "percent%",
        "hash#",
    ],
)
def test_register_rejects_bad_usernames(client, username):
    assert_error(register(client, username), 400)


def test_register_accepts_username_edges(client):
    for username in ["a", "a" * 64, "A.b_c-d@e", "0123456789", "@-._"]:
        response = register(client, username)
        assert response.status_code == 201, (username, response.get_json())
        assert response.get_json()["user"]["username"] == username


@pytest.mark.parametrize(
    "password",
    ["", "1234567", "é" * 3 + "a", "a" * 73, "é" * 36 + "a", "€" * 24 + "a"],
    ids=[
        "empty",
        "7-ascii",
        "7-bytes-4-chars",
        "73-ascii",
        "73-bytes-37-chars",
        "73-bytes-25-chars",
    ],
)
def test_register_rejects_password_outside_8_to_72_bytes(client, password):
    response = register(client, "pwuser", password)
    assert_error(response, 400)
    if password:
        assert_no_secret(response, password)


@pytest.mark.parametrize(
    "password",
    ["12345678", "é" * 4, "a" * 72, "é" * 36, "€" * 24],
    ids=["8-ascii", "8-bytes-4-chars", "72-ascii", "72-bytes-36-chars", "72-bytes-24-chars"],
)
def test_register_accepts_password_of_8_to_72_bytes_and_it_logs_in(client, password):
    assert register(client, "pwuser", password).status_code == 201
    response = login(client, "pwuser", password)
    assert response.status_code == 200
    assert_no_secret(response, password)


@pytest.mark.parametrize(
    "email",
    ["no-at-sign", "two@@example.com", "a@b@c", "@x", "x@", "@", "", 5, True, ["a@b"], {"a": "b"}],
)
def test_register_rejects_bad_email(client, email):
    assert_error(register(client, "mailuser", email=email), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"password": "a good password"},
        {"username": "x"},
        {},
        {"username": 5, "password": "a good password"},
        {"username": None, "password": "a good password"},
        {"username": ["x"], "password": "a good password"},
        {"username": "x", "password": 12345678},
        {"username": "x", "password": None},
        {"username": "x", "password": ["a good password"]},
    ],
)
def test_register_rejects_missing_or_mistyped_fields(client, body):
    assert_error(client.post("/users/register", json=body), 400)


def test_register_duplicate_username_is_409_and_keeps_the_first_account(client):
    assert register(client, "dup", "first-password").status_code == 201
    assert_error(register(client, "dup", "second-password"), 409)
    assert login(client, "dup", "first-password").status_code == 200
    assert login(client, "dup", "second-password").status_code == 401


def test_usernames_are_case_sensitive(client):
    bob = register(client, "Bob", "bob-upper-pass")
    low = register(client, "bob", "bob-lower-pass")
    assert bob.status_code == 201 and low.status_code == 201
    assert bob.get_json()["user"]["id"] != low.get_json()["user"]["id"]
    assert login(client, "BOB", "bob-upper-pass").status_code == 401
    assert login(client, "bob", "bob-upper-pass").status_code == 401
    response = login(client, "Bob", "bob-upper-pass")
    assert response.status_code == 200
    assert response.get_json()["user"]["username"] == "Bob"


# --- body parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}],
    ids=["no-content-type", "text-plain", "curl-default-form"],
)
def test_json_body_is_parsed_whatever_the_content_type(client, headers):
    data = '{"username": "curl", "password": "a good password"}'
    response = client.post("/users/register", data=data, headers=headers)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["user"]["username"] == "curl"
    response = client.post(
        "/users/login", data='{"username": "curl", "password": "a good password"}', headers=headers
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{",
        b"username=a&password=b",
        b"\xff\xfe\x00",
        b"[]",
        b'[{"username": "a", "password": "a good password"}]',
        b'"a string"',
        b"42",
        b"null",
        b'{"username": "a", "password": "\\ud800 lone surrogate"}',
    ],
)
@pytest.mark.parametrize("path", ["/users/register", "/users/login"])
def test_body_that_is_not_a_json_object_is_400(client, path, data):
    assert_error(client.post(path, data=data, content_type="application/json"), 400)


def test_body_larger_than_max_message_bytes_is_rejected(make_app):
    client = make_app(MAX_MESSAGE_BYTES="1024").test_client()
    padding = "x" * 2000
    for path in ("/users/register", "/users/login"):
        response = client.post(
            path, json={"username": "big", "password": "a good password", "note": padding}
        )
        assert response.status_code in (400, 413)
        assert_error(response, response.status_code)


def test_body_of_exactly_max_message_bytes_is_accepted(make_app):
    client = make_app(MAX_MESSAGE_BYTES="1024").test_client()
    prefix = '{"username": "edge", "password": "a good password", "note": "'
    data = prefix + "x" * (1024 - len(prefix) - 2) + '"}'
    assert len(data.encode()) == 1024
    response = client.post("/users/register", data=data)
    assert response.status_code == 201, response.get_json()


# --- login ----------------------------------------------------------------------------------


def test_login_returns_200_with_user_and_token(client):
    registered = register(client, "carol", "carol-password", email="c@example.org").get_json()
    response = login(client, "carol", "carol-password")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "logged_in"
    assert_user(body["user"], "carol", "c@example.org")
    assert body["user"] == registered["user"]
    assert claims_of(body["token"])["sub"] == registered["user"]["id"]
    assert_no_secret(response, "carol-password")


def test_wrong_password_and_unknown_user_get_the_same_401(client):
    register(client, "dave", "dave-password")
    wrong = login(client, "dave", "not-daves-password")
    unknown = login(client, "nobody", "dave-password")
    assert_error(wrong, 401)
    assert_error(unknown, 401)
    assert wrong.get_json() == unknown.get_json()
    assert wrong.headers["Content-Type"] == unknown.headers["Content-Type"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "dave"},
        {"password": "dave-password"},
        {"username": 1, "password": "x" * 8},
        {"username": "dave", "password": None},
        {"username": "dave", "password": ["dave-password"]},
    ],
)
def test_login_with_missing_or_mistyped_fields_is_400(client, body):
    assert_error(client.post("/users/login", json=body), 400)


# --- tokens ---------------------------------------------------------------------------------


def test_profile_with_a_valid_token_returns_the_user(client):
    body = register(client, "erin", "erin-password", email="e@x.io").get_json()
    response = client.get("/users/profile", headers=bearer(body["token"]))
    assert response.status_code == 200
    assert set(response.get_json()) >= {"user"}
    assert response.get_json()["user"] == body["user"]
    assert_user(response.get_json()["user"], "erin", "e@x.io")
    assert_no_secret(response, "erin-password")


def test_issued_token_has_user_id_as_sub_and_expiry_from_settings(make_app):
    for minutes in ("1", "1440"):
        client = make_app(JWT_EXPIRES_MINUTES=minutes).test_client()
        before = time.time()
        body = register(client, "frank", "frank-password").get_json()
        claims = claims_of(body["token"])
        assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
        assert claims["sub"] == body["user"]["id"]
        assert isinstance(claims["sub"], str)
        assert abs(claims["exp"] - (before + int(minutes) * 60)) < 10
        login_claims = claims_of(login(client, "frank", "frank-password").get_json()["token"])
        assert login_claims["sub"] == body["user"]["id"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "{token}",
        "Token {token}",
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer {token} extra",
        "Bearer {token}x",
    ],
    ids=[
        "none",
        "empty",
        "bearer-only",
        "bearer-space",
        "no-scheme",
        "token-scheme",
        "basic",
        "garbage",
        "three-parts",
        "extra-part",
        "tampered",
    ],
)
def test_missing_or_malformed_authorization_is_401(client, make_user, header):
    token = make_user()
    headers = {} if header is None else {"Authorization": header.format(token=token)}
    for path in ("/users/profile", "/topics"):
        assert_error(client.get(path, headers=headers), 401)


def test_forged_token_with_the_right_secret_is_accepted(client, make_user, forge):
    # The control for the rejections below: the forging itself is sound.
    sub = claims_of(make_user())["sub"]
    assert client.get("/users/profile", headers=bearer(forge(sub))).status_code == 200


def test_expired_token_is_401(make_app, make_user, forge):
    client = make_app(JWT_EXPIRES_MINUTES="1").test_client()
    sub = claims_of(make_user(client=client))["sub"]
    expired = forge(sub, exp_in=-120)
    for path in ("/users/profile", "/topics"):
        assert_error(client.get(path, headers=bearer(expired)), 401)


def test_token_signed_with_another_secret_is_401(client, make_user, forge):
    sub = claims_of(make_user())["sub"]
    token = forge(sub, key="another-secret-" + "f" * 64)
    for path in ("/users/profile", "/topics"):
        assert_error(client.get(path, headers=bearer(token)), 401)


def test_token_with_alg_none_is_401(client, make_user, forge):
    sub = claims_of(make_user())["sub"]
    token = forge(sub, key=None, algorithm="none")
    assert jwt.get_unverified_header(token)["alg"] == "none"
    for path in ("/users/profile", "/topics"):
        assert_error(client.get(path, headers=bearer(token)), 401)


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
def test_token_with_another_hmac_algorithm_and_the_right_secret_is_401(
    client, make_user, forge, jwt_secret, algorithm
):
    sub = claims_of(make_user())["sub"]
    token = forge(sub, key=jwt_secret, algorithm=algorithm)
    for path in ("/users/profile", "/topics"):
        assert_error(client.get(path, headers=bearer(token)), 401)


def test_token_of_a_user_that_does_not_exist(client, forge):
    token = forge(uuid.uuid4().hex)
    assert_error(client.get("/users/profile", headers=bearer(token)), 404)
    # Auth is stateless: topic routes accept any validly signed token.
    response = client.get("/topics", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"topics": []}
    response = client.post("/topics", json={"name": "ghost"}, headers=bearer(token))
    assert response.status_code == 201


def test_tokens_from_one_app_do_not_open_another_with_a_different_secret(make_app, make_user):
    token = make_user()
    other = make_app(JWT_SECRET_KEY="a-different-secret-" + "9" * 64).test_client()
    assert_error(other.get("/topics", headers=bearer(token)), 401)


def test_no_password_hash_or_token_in_log_lines(make_app):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    client = make_app(LOG_LEVEL="debug").test_client()
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    try:
        body = register(client, "logged", "log-me-not-password").get_json()
        login(client, "logged", "log-me-not-password")
        login(client, "logged", "wrong-log-me-not")
        client.get("/users/profile", headers=bearer(body["token"]))
        client.get("/topics", headers=bearer(body["token"] + "x"))
        client.get("/ws?token=" + body["token"])
    finally:
        logger.removeHandler(handler)
    assert records, "expected request log lines"
    text = "\n".join(record.getMessage() for record in records)
    assert "log-me-not" not in text
    assert body["token"].split(".")[2] not in text
    for marker in HASH_MARKERS:
        assert marker not in text
