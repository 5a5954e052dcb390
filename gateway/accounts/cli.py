"""`flask --app wsgi users ...`: list, create, delete, promote and demote accounts.

The commands run inside the app context that Flask's CLI pushes, on the app's own user
store, so they act on the database the gateway uses (DATABASE_URL). Registered on an app
by `init_app`. Passwords are prompted for (hidden, twice) unless given with --password,
and neither a password nor its hash is ever printed or logged.
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from gateway.accounts.store import (
    User,
    UsernameTaken,
    UserStore,
    ValidationError,
    validate_registration,
)
from gateway.protocol import iso
from gateway.state import get_user_store

users = AppGroup("users", help="Manage user accounts in the gateway's database.")


def init_app(app: Flask) -> None:
    """Register the `users` command group on the app's CLI."""
    app.cli.add_command(users)


def _existing(store: UserStore, username: str) -> User:
    user = store.find(username)
    if user is None:
        raise click.ClickException(f"no user named {username!r}")
    return user


def _line(user: User) -> str:
    # Tab-separated: an email may contain spaces. "-" for no email keeps four columns.
    return "\t".join((user.username, user.role, user.email or "-", iso(user.created_at)))


@users.command("list")
def list_users() -> None:
    """Print every account: username, role, email, created_at (sorted by username)."""
    accounts = get_user_store().list_users()
    for user in accounts:
        click.echo(_line(user))
    if not accounts:
        click.echo("no users", err=True)


@users.command("create")
@click.argument("username")
@click.option(
    "--password",
    "-p",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The password (8-72 bytes). Prompted for when left out, which keeps it out of "
    "the shell history and the process list.",
)
@click.option("--email", default=None, help="An optional email address.")
@click.option("--admin", is_flag=True, help="Create an admin rather than a user.")
def create(username: str, password: str, email: str | None, admin: bool) -> None:
    """Create an account named USERNAME."""
    body = {"username": username, "password": password, "email": email}
    try:
        username, password, email = validate_registration(body)
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from None
    role = "admin" if admin else "user"
    try:
        user = get_user_store().register(username, password, email, role)
    except UsernameTaken:
        raise click.ClickException(f"username {username!r} is already taken") from None
    click.echo(f"created {user.role} {user.username!r} (id {user.id})")


@users.command("delete")
@click.argument("username")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking for confirmation.")
def delete(username: str, yes: bool) -> None:
    """Delete the account named USERNAME."""
    store = get_user_store()
    user = _existing(store, username)
    if not yes:
        click.confirm(f"Delete {user.role} {username!r}?", abort=True)
    if not store.delete(username):  # deleted by someone else meanwhile
        raise click.ClickException(f"no user named {username!r}")
    click.echo(f"deleted {username!r}")


def _set_role(username: str, role: str) -> None:
    store = get_user_store()
    if _existing(store, username).role == role:
        click.echo(f"{username!r} is already {role!r}")
        return
    if store.set_role(username, role) is None:  # deleted by someone else meanwhile
        raise click.ClickException(f"no user named {username!r}")
    click.echo(f"{username!r} is now {role!r}")


@users.command("promote")
@click.argument("username")
def promote(username: str) -> None:
    """Make USERNAME an admin."""
    _set_role(username, "admin")


@users.command("demote")
@click.argument("username")
def demote(username: str) -> None:
    """Make USERNAME a plain user."""
    _set_role(username, "user")
