"""Accounts (docs/rest-api.md): register, login, profile."""

from __future__ import annotations

from flask import Blueprint
from flask_jwt_extended import get_jwt_identity, jwt_required

from gateway.accounts.store import User, UsernameTaken, ValidationError, validate_registration
from gateway.accounts.tokens import issue_token
from gateway.guards.rates import login_limited
from gateway.http.bodies import json_body, json_response, string_field
from gateway.http.errors import ApiError
from gateway.protocol import iso
from gateway.state import get_user_store

bp = Blueprint("users", __name__, url_prefix="/users")


def user_json(user: User) -> dict:
    """Shape a user for responses; the password hash never leaves the store."""
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    }


@bp.post("/register")
@login_limited
def register():
    """Create an account and return it with a token."""
    try:
        username, password, email = validate_registration(json_body())
    except ValidationError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        user = get_user_store().register(username, password, email)
    except UsernameTaken:
        raise ApiError(409, f"username {username!r} is already taken") from None
    body = {"status": "registered", "user": user_json(user), "token": issue_token(user.id)}
    return json_response(body, 201)


@bp.post("/login")
@login_limited
def login():
    """Check a username and password and return a fresh token."""
    body = json_body()
    username = string_field(body, "username")
    password = string_field(body, "password")
    user = get_user_store().authenticate(username, password)
    if user is None:
        raise ApiError(401, "invalid username or password")
    return json_response(
        {"status": "logged_in", "user": user_json(user), "token": issue_token(user.id)}
    )


@bp.get("/profile")
@jwt_required()
def profile():
    """Return the account of the token's user."""
    user = get_user_store().get(get_jwt_identity())
    if user is None:
        raise ApiError(404, "user not found")
    return json_response({"user": user_json(user)})
