"""JWT set-up (docs/rest-api.md): HS256 only, 401 JSON errors, and token checks for the WebSocket."""

from __future__ import annotations

from datetime import timedelta

import jwt
from flask import Flask, Request
from flask_jwt_extended import JWTManager, create_access_token, decode_token
from flask_jwt_extended.exceptions import JWTExtendedException

from gateway.config import Settings
from gateway.http.errors import error_response


class AuthError(Exception):
    """The request carries no usable token."""


def init_jwt(app: Flask, settings: Settings) -> None:
    """Configure flask-jwt-extended and answer every token failure with 401 JSON."""
    app.config.update(
        JWT_SECRET_KEY=settings.jwt_secret_key,
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=settings.jwt_expires_minutes),
        JWT_TOKEN_LOCATION=["headers"],
        JWT_COOKIE_CSRF_PROTECT=False,
    )
    manager = JWTManager(app)

    def unauthorized(message: str):
        return error_response(401, message)

    manager.unauthorized_loader(
        lambda reason: unauthorized("missing or malformed Authorization header")
    )
    manager.invalid_token_loader(lambda reason: unauthorized("invalid token"))
    manager.expired_token_loader(lambda header, payload: unauthorized("token has expired"))
    manager.revoked_token_loader(lambda header, payload: unauthorized("token has been revoked"))
    manager.needs_fresh_token_loader(lambda header, payload: unauthorized("fresh token required"))
    manager.token_verification_failed_loader(lambda header, payload: unauthorized("invalid token"))
    manager.user_lookup_error_loader(lambda header, payload: unauthorized("unknown user"))
    # PyJWT checks `exp` only when a token has one, and flask-jwt-extended cannot ask it to
    # require claims: a token that never expires is refused here (docs/rest-api.md).
    manager.token_verification_loader(lambda header, payload: has_required_claims(payload))


def has_required_claims(claims: dict) -> bool:
    """Tell whether decoded claims carry what every token must: a string `sub` and an `exp`."""
    return isinstance(claims.get("sub"), str) and "exp" in claims


def issue_token(user_id: str) -> str:
    """Return a signed access token whose `sub` is the user id."""
    return create_access_token(identity=user_id)


def token_from(request: Request) -> str:
    """Return the token of a WebSocket upgrade: `?token=` or an Authorization Bearer header."""
    token = request.args.get("token")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    raise AuthError("missing token: pass ?token=<jwt> or an Authorization: Bearer header")


def verify(token: str) -> str:
    """Return the user id of a valid access token, or raise AuthError."""
    try:
        claims = decode_token(token)
    except jwt.ExpiredSignatureError:
        raise AuthError("token has expired") from None
    except (jwt.PyJWTError, JWTExtendedException):
        raise AuthError("invalid token") from None
    if not has_required_claims(claims) or claims.get("type") != "access":
        raise AuthError("invalid token")
    return claims["sub"]
