"""`gateway/accounts.py` on the memory store: the YAML bootstrap the app runs at start-up,
what a new key's record holds (its hash, never itself), and the operator's view of a key."""

from __future__ import annotations

import pytest

from gateway import accounts
from gateway.admin.models import KeyUpdate, TeamCreate, TeamUpdate
from gateway.config import ConfigError, parse
from gateway.errors import InvalidRequest, NotFound
from gateway.identity import ApiKey, hash_key, key_id_for_hash
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
    key, key_teams = found
    assert key.id == key_id_for_hash(hash_key("alpha-key-0001")) and key.name == "one"
    assert key.teams == ("alpha", "beta") and key.default_team == "alpha"  # also_teams joins; the declaring one leads
    assert key.models == ("claude-haiku-*",) and key.prefix == "alpha-key"
    assert [team.id for team in key_teams] == ["alpha", "beta"]
    beta_key, _ = await store.find_key(hash_key("beta-key-0002"))
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
