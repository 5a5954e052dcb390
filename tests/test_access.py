"""The access decisions (gateway/guards/access.py) against docs/access.md's table."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from gateway.brokers import Access
from gateway.guards import access
from gateway.guards.access import Forbidden, Roles

ACTIONS = (
    access.SUBSCRIBE,
    access.PUBLISH,
    access.SEE_MEMBERS,
    access.MANAGE_MEMBERS,
    access.DELETE,
)
TABLE = {
    # (action, publish, subscribe): who besides owner and admin may
    access.SUBSCRIBE: lambda publish, subscribe: (
        {"member", "other"} if subscribe == "anyone" else {"member"}
    ),
    access.PUBLISH: lambda publish, subscribe: {
        "anyone": {"member", "other"},
        "members": {"member"},
        "owner": set(),
    }[publish],
    access.SEE_MEMBERS: lambda publish, subscribe: {"member"},
    access.MANAGE_MEMBERS: lambda publish, subscribe: set(),
    access.DELETE: lambda publish, subscribe: set(),
}


@pytest.mark.parametrize(
    ("publish", "subscribe"),
    list(itertools.product(("anyone", "members", "owner"), ("anyone", "members"))),
)
def test_every_decision_follows_the_table(publish, subscribe):
    topic = Access("o", publish, subscribe, frozenset({"m"}))
    users = {"owner": "o", "member": "m", "other": "x"}
    for action in ACTIONS:
        may = TABLE[action](publish, subscribe) | {"owner"}
        for role, user in users.items():
            assert access.allowed(action, topic, user) == (role in may), (action, role)
        assert access.allowed(action, topic, "x", admin=True)
        assert (
            not access.allowed(action, Access(None, publish, subscribe), None)
            or (action == access.SUBSCRIBE and subscribe == "anyone")
            or (action == access.PUBLISH and publish == "anyone")
        )


def test_a_check_raises_forbidden_naming_the_topic():
    check = access.check(access.PUBLISH, "x", "orders")
    check(Access("o"))  # anyone may publish
    with pytest.raises(Forbidden, match="'orders'"):
        check(Access("o", publish="owner"))


def test_run_as_looks_the_role_up_only_on_a_refusal():
    looked_up = []
    roles = Roles(lambda user: looked_up.append(user) or ("admin" if user == "a" else "user"))
    calls = []

    def call(check):
        calls.append(check)
        if check is not None:
            check(Access("o", publish="owner"))
        return "done"

    with pytest.raises(Forbidden):
        access.run_as(access.PUBLISH, "x", "t", roles, call)
    assert access.run_as(access.PUBLISH, "a", "t", roles, call) == "done"
    assert calls[-1] is None  # the admin's second call runs without a check
    assert access.run_as(access.PUBLISH, "o", "t", roles, call) == "done"
    assert looked_up == ["x", "a"]  # the owner needed no lookup


def test_roles_are_remembered_briefly():
    answers = iter(["admin", "user"])
    roles = Roles(lambda user: next(answers))
    assert roles.is_admin("u") and roles.is_admin("u")  # one lookup, remembered
    roles._known["u"] = (0.0, True)  # as if ROLE_SECONDS had passed
    assert not roles.is_admin("u")


def test_removing_a_member_revokes_reading_only_when_it_was_membership_that_allowed_it():
    roles = Roles(lambda user: "admin" if user == "a" else "user")
    private = Access("o", subscribe="members", members=frozenset({"m", "a"}))
    assert access.revokes_reading(private, "m", roles)
    assert not access.revokes_reading(private, "a", roles)  # an admin may read anyway
    assert not access.revokes_reading(replace(private, subscribe="anyone"), "m", roles)
    assert not access.revokes_reading(Access("m", subscribe="members"), "m", roles)  # owner
