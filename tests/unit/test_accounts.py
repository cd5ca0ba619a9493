"""`gateway/accounts.py` on the memory store: the YAML bootstrap the app runs at start-up,
what a new key's record holds (its hash, never itself), and the operator's view of a key."""

from __future__ import annotations

import asyncio

import pytest

from gateway import accounts
from gateway.admin.models import KeyUpdate, TeamCreate, TeamUpdate
from gateway.config import ConfigError, parse
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.identity import ApiKey, Team, hash_key, key_id_for_hash
from gateway.store.memory import MemoryStore

YAML = """
teams:
  - id: alpha
    name: Alpha
    models: [claude-*]
    limits: {requests_per_minute: 60}
    keys:
      - {name: one, key: alpha-key-0001, models: [claude-haiku-*], also_teams: [beta]}
  - id: beta
    keys:
      - {name: two, key: beta-key-0002, description: for beta}
"""


def teams(text: str = YAML):
    return parse(text, env={}).teams


async def test_bootstrap_declares_teams_and_keys():
    store = MemoryStore()
    await accounts.bootstrap(store, teams(), clock=lambda: 1000.0)
    alpha = await store.get_team("alpha")
    assert alpha.name == "Alpha" and alpha.models == ("claude-*",) and alpha.limits.requests_per_minute == 60
    found = await store.find_key(hash_key("alpha-key-0001"))
    assert found is not None
    key, key_teams = found.key, found.teams
    assert key.id == key_id_for_hash(hash_key("alpha-key-0001")) and key.name == "one"
    assert key.teams == ("alpha", "beta") and key.default_team == "alpha"  # also_teams joins; the declaring one leads
    assert key.models == ("claude-haiku-*",) and key.prefix == "alpha-key"
    assert [team.id for team in key_teams] == ["alpha", "beta"]
    beta_key = (await store.find_key(hash_key("beta-key-0002"))).key
    assert beta_key.description == "for beta" and beta_key.teams == ("beta",)


async def test_bootstrap_again_changes_nothing_it_should_keep():
    store = MemoryStore()
    await accounts.bootstrap(store, teams(), clock=lambda: 1000.0)
    key_id = key_id_for_hash(hash_key("beta-key-0002"))
    await accounts.revoke_key(store, key_id, clock=lambda: 1500.0)

    await accounts.bootstrap(store, teams(YAML.replace("name: Alpha", "name: Alpha 2")), clock=lambda: 2000.0)
    assert len(await store.list_keys()) == 2 and len(await store.list_teams()) == 2
    assert (await store.get_team("alpha")).name == "Alpha 2"  # the file is the source of truth
    assert (await store.get_team("alpha")).created_at == 1000.0
    key = await store.get_key(key_id)
    assert key.revoked_at == 1500.0 and key.created_at == 1000.0  # a revocation survives a restart


async def test_bootstrap_refuses_a_key_joining_an_unknown_team():
    store = MemoryStore()
    with pytest.raises(ConfigError) as caught:
        await accounts.bootstrap(store, teams(YAML.replace("also_teams: [beta]", "also_teams: [gamma]")))
    assert caught.value.problems == ["teams[0].keys[0].also_teams[0]: unknown team 'gamma'"]
    assert await store.list_teams() == []  # checked before anything is written


async def test_a_new_key_is_stored_as_its_hash_only():
    store = MemoryStore()
    await accounts.create_team(store, TeamCreate(id="t"))
    record, raw = await accounts.create_key(store, ["t", "t"], name="n", clock=lambda: 1000.0)
    assert raw.startswith("gk-") and len(raw) == 46
    assert record.hash == hash_key(raw) and record.prefix == raw[:9] and record.teams == ("t",)
    assert raw not in record.model_dump_json()
    assert (await store.find_key(hash_key(raw)))[0].id == record.id


async def test_key_checks():
    store = MemoryStore()
    await accounts.create_team(store, TeamCreate(id="t"))
    with pytest.raises(InvalidRequest, match="default_team: 'u' is not one of the key's teams"):
        await accounts.create_key(store, ["t"], default_team="u")
    with pytest.raises(InvalidRequest, match=r"teams\[1\]: no team 'ghost'"):
        await accounts.create_key(store, ["t", "ghost"])
    with pytest.raises(InvalidRequest, match="expires_at: must be in the future"):
        await accounts.create_key(store, ["t"], expires_at=1.0)
    record, _ = await accounts.create_key(store, ["t"])
    with pytest.raises(InvalidRequest, match="default_team"):
        await accounts.update_key(store, record.id, KeyUpdate.model_validate({"default_team": "ghost"}))
    with pytest.raises(NotFound):
        await accounts.update_team(store, "ghost", TeamUpdate())


def test_key_view_never_holds_the_hash():
    key = ApiKey(id="key_1", prefix="gk-abcdef", hash="f" * 64, teams=("t",), default_team="t", created_at=1.0)
    view = accounts.key_view(key, at=10.0)
    assert "hash" not in view and "key" not in view and "f" * 64 not in str(view)
    assert view["status"] == "active" and view["teams"] == ["t"]
    assert accounts.key_view(key.model_copy(update={"expires_at": 10.0}), at=10.0)["status"] == "expired"
    revoked = key.model_copy(update={"expires_at": 10.0, "revoked_at": 5.0})
    assert accounts.key_view(revoked, at=10.0)["status"] == "revoked"


# ---------------------------------------------------------------- the file owns what it declares

OWNED = """
teams:
  - id: alpha
    keys:
      - {name: ci, key: "${CI_KEY}"}
      - {name: gone-later, key: alpha-key-0009}
  - id: beta
    keys:
      - {name: two, key: beta-key-0002}
"""


def owned(ci_key: str, text: str = OWNED):
    return parse(text, env={"CI_KEY": ci_key}).teams


async def test_a_key_no_longer_declared_is_revoked_and_a_new_value_replaces_the_old():
    """The README's rotation, followed: start with CI_KEY=A, stop, start with CI_KEY=B.
    Key A answered 200 for ever after, and its record's expiry set through the admin API
    was wiped by every load."""
    store = MemoryStore()
    await accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 1000.0)
    ci = (await store.find_key(hash_key("ci-value-A"))).key
    made, _ = await accounts.create_key(store, ["alpha"], name="made-by-an-operator")
    await accounts.update_key(store, ci.id, KeyUpdate.model_validate({"expires_at": 9e9}))

    await accounts.bootstrap(
        store,
        owned("ci-value-B", OWNED.replace("      - {name: gone-later, key: alpha-key-0009}\n", "")),
        clock=lambda: 2000.0,
    )

    assert await store.find_key(hash_key("ci-value-A")) is None  # no grace: the file replaced it
    replaced = (await store.find_key(hash_key("ci-value-B"))).key
    assert replaced.id == ci.id and replaced.rotated_at == 2000.0 and replaced.created_at == 1000.0
    assert replaced.expires_at == 9e9  # the operator's, which the file does not declare
    gone = (await store.find_key(hash_key("alpha-key-0009"))).key
    assert gone.revoked_at == 2000.0
    assert (await store.get_key(made.id)).revoked_at is None  # never the admin API's keys
    assert (await store.find_key(hash_key("beta-key-0002"))).key.revoked_at is None
    assert len(await store.list_keys()) == 4


async def test_loading_the_same_file_again_changes_nothing():
    store = MemoryStore()
    await accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 1000.0)
    before = await store.list_keys()
    await asyncio.gather(*(accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 2000.0) for _ in range(3)))
    assert await store.list_keys() == before


async def test_every_process_loading_a_new_value_at_once_agrees():
    store = MemoryStore()
    await accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 1000.0)
    await asyncio.gather(*(accounts.bootstrap(store, owned("ci-value-B"), clock=lambda: 2000.0) for _ in range(4)))
    keys = await store.list_keys()
    assert len(keys) == 3 and all(key.revoked_at is None for key in keys)
    assert await store.find_key(hash_key("ci-value-A")) is None
    assert (await store.find_key(hash_key("ci-value-B"))).key.rotated_at == 2000.0


async def test_values_that_swap_names_keep_their_records():
    store = MemoryStore()
    await accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 1000.0)
    ids = {raw: (await store.find_key(hash_key(raw))).key.id for raw in ("ci-value-A", "alpha-key-0009")}
    swapped = OWNED.replace('{name: ci, key: "${CI_KEY}"}', "{name: gone-later, key: ci-value-A}").replace(
        "{name: gone-later, key: alpha-key-0009}", "{name: ci, key: alpha-key-0009}"
    )
    await accounts.bootstrap(store, owned("unused", swapped), clock=lambda: 2000.0)
    for raw, key_id in ids.items():
        key = (await store.find_key(hash_key(raw))).key
        assert key.id == key_id and key.revoked_at is None and key.rotated_at is None
    assert (await store.get_key(ids["alpha-key-0009"])).name == "ci"


async def test_a_team_no_longer_declared_is_handed_to_the_admin_api():
    store = MemoryStore()
    await accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 1000.0)
    await accounts.bootstrap(store, owned("ci-value-A", OWNED.split("  - id: beta")[0]), clock=lambda: 2000.0)
    beta = await store.get_team("beta")
    assert beta is not None and beta.managed_by is None  # kept: its usage stays readable
    assert (await store.find_key(hash_key("beta-key-0002"))).key.revoked_at == 2000.0
    renamed = await accounts.update_team(store, "beta", TeamUpdate.model_validate({"name": "now the API's"}))
    assert renamed.name == "now the API's"
    assert (await store.get_team("alpha")).managed_by == "config"


async def test_what_the_file_declares_cannot_be_changed_through_the_api():
    store = MemoryStore()
    await accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 1000.0)
    ci = (await store.find_key(hash_key("ci-value-A"))).key
    with pytest.raises(Conflict, match=r"team 'alpha' is declared in gateway.yaml: change models there"):
        await accounts.update_team(store, "alpha", TeamUpdate.model_validate({"models": ["x"]}), source="gateway.yaml")
    with pytest.raises(Conflict, match="team 'alpha' is declared in the configuration file: remove it there"):
        await accounts.delete_team(store, "alpha")
    with pytest.raises(Conflict, match=rf"key '{ci.id}' is declared in gateway.yaml: change limits, models there"):
        await accounts.update_key(
            store,
            ci.id,
            KeyUpdate.model_validate({"models": ["x"], "limits": {}, "expires_at": 9e9}),
            source="gateway.yaml",
        )
    with pytest.raises(Conflict, match="its value comes from there"):
        await accounts.rotate_key(store, ci.id, 60.0)
    assert (await store.get_key(ci.id)) == ci  # nothing of it changed
    # What the file does not declare is the operators': an expiry, a revocation.
    assert (await accounts.update_key(store, ci.id, KeyUpdate.model_validate({"expires_at": 9e9}))).expires_at == 9e9
    await accounts.revoke_key(store, ci.id, clock=lambda: 1500.0)
    await accounts.bootstrap(store, owned("ci-value-A"), clock=lambda: 2000.0)
    kept = await store.get_key(ci.id)
    assert (kept.revoked_at, kept.expires_at) == (1500.0, 9e9)
    # A key made through the API for a team of the file is the API's.
    made, _ = await accounts.create_key(store, ["alpha"])
    assert (await accounts.update_key(store, made.id, KeyUpdate.model_validate({"models": ["x"]}))).models == ("x",)
    assert accounts.key_view(made)["managed_by"] is None and accounts.key_view(kept)["managed_by"] == "config"


async def test_records_stored_before_owners_were_recorded():
    """An earlier version stored the file's keys with no owner, under ids made from their
    hashes; those still load, and are recognised as the file's."""
    store = MemoryStore()
    await store.put_team(Team(id="alpha"))
    await store.put_team(Team(id="beta"))
    for raw, team in (("ci-value-A", "alpha"), ("alpha-key-0009", "alpha"), ("beta-key-0002", "beta")):
        digest = hash_key(raw)
        await store.put_key(
            ApiKey(id=key_id_for_hash(digest), name="", prefix=raw[:9], hash=digest, teams=(team,), default_team=team)
        )
    made, _ = await accounts.create_key(store, ["alpha"])
    await accounts.bootstrap(
        store,
        owned("ci-value-A", OWNED.replace("    keys:\n      - {name: two, key: beta-key-0002}\n", "    keys: []\n")),
    )
    assert (await store.find_key(hash_key("ci-value-A"))).key.managed_by == "config"  # adopted
    assert (await store.find_key(hash_key("beta-key-0002"))).key.revoked_at is not None  # no longer declared
    assert (await store.get_key(made.id)).revoked_at is None


async def test_a_value_retired_by_a_rotation_is_refused_before_anything_is_written():
    store = MemoryStore()
    await accounts.create_team(store, TeamCreate(id="alpha"))
    made, raw = await accounts.create_key(store, ["alpha"])
    await accounts.rotate_key(store, made.id, grace_seconds=3600)  # `raw` still works, for its grace
    digest = hash_key("ci-value-A")
    # An earlier version's file key, rotated through the admin API (it allowed that).
    await store.put_key(
        ApiKey(id=key_id_for_hash(digest), prefix="ci-value-", hash=digest, teams=("alpha",), default_team="alpha")
    )
    await store.rotate_key(key_id_for_hash(digest), hash_key("elsewhere-1"), "elsewhere", 0, 1.0)
    before = await store.list_keys()
    text = 'teams:\n  - id: alpha\n    keys:\n      - {key: ci-value-A}\n      - {key: "${CI_KEY}"}\n'
    with pytest.raises(ConfigError) as caught:
        await accounts.bootstrap(store, owned(raw, text))
    assert caught.value.problems == [
        f"teams[0].keys[0].key: this value was key '{key_id_for_hash(digest)}''s until a rotation replaced it; "
        "declare that key's current value, or a new one",
        f"teams[0].keys[1].key: this value is the previous one of key '{made.id}', in its grace period after a "
        "rotation; declare another value",
    ]
    assert await store.list_keys() == before
    assert (await store.get_team("alpha")).managed_by is None
