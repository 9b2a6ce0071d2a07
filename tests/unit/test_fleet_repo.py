"""
The Pi's repository (fleet_repo) without Salt: a stand-in HTTP session,
real Ed25519 keys, a real repository folder under tmp_path.
"""

import json

import pytest

import fleet_inventory
import fleet_release
import fleet_repo
import fleet_sign
from tests.support import topology as topo
from tests.unit.test_fleet_client import NAME, NOW, Session, corrupt, key, release, served  # noqa: F401 - key: fixture

MASTER = "http://10.9.9.9/kiosk-releases/"


def stage(repo, session, keys, version="2.0.0", pin=None, bad=None):
    return fleet_repo.stage(str(repo), NAME, version, [("master", MASTER)], keys, session, pin,
                            bad_copy=None if bad is None else lambda exc, base: bad.append((type(exc), base)))


def test_check_source_and_sources():
    for good in ("campus", "salt://kiosk_releases/", "http://pi/kiosk-releases/", "https://m/kiosk-releases"):
        assert fleet_repo.check_source(good) == good
    for bad in ("ftp://x/", "", None, ["campus"], "/srv/kiosk-releases"):
        with pytest.raises(fleet_release.ReleaseError, match=r"^source: "):
            fleet_repo.check_source(bad)
    assert fleet_repo.sources("salt://kiosk_releases/") == [("master", "salt://kiosk_releases/")]
    assert fleet_repo.sources("http://m/kiosk-releases") == [("http://m/kiosk-releases", "http://m/kiosk-releases/")]
    inventory = fleet_inventory.from_pillar(topo.two_campus_inventory(wol_port=9, repo_port=8080))
    peers = fleet_repo.sources("campus", inventory, "pi-east-1")
    assert [pi for pi, _ in peers] == ["pi-east-2"] and peers[0][1].endswith("/kiosk-releases/")


def test_stage_goes_live_then_indexes_and_a_second_stage_changes_nothing(key, tmp_path):
    repo = tmp_path / "repo"
    session = Session(served(MASTER, release(key, "2.0.0")))
    out = stage(repo, session, key[1])
    assert out["changed"] is True and out["source"] == "master" and list(out["index"]["versions"]) == ["2.0.0"]
    assert fleet_repo.live(str(repo), NAME, "2.0.0") and fleet_repo.live_signed(str(repo), NAME, "2.0.0", key[1])
    assert json.loads((repo / NAME / "index.json").read_text()) == out["index"]
    session.asked.clear()
    again = stage(repo, session, key[1])
    assert again["changed"] is False and session.asked == []  # live and signed: nothing fetched
    assert not (repo / ".staging" / f"{NAME}-2.0.0").exists()  # the work dir was renamed live


def test_stage_refuses_a_bad_copy_and_keeps_the_repository_as_it_was(key, tmp_path):
    repo = tmp_path / "repo"
    bad = []
    with pytest.raises(fleet_release.ReleaseError, match="md5 mismatch"):
        stage(repo, Session(served(MASTER, corrupt(release(key, "2.0.0"), "2.0.0"))), key[1], bad=bad)
    assert bad == [(fleet_release.IntegrityError, MASTER)]
    assert not (repo / NAME / "2.0.0").exists() and not (repo / NAME / "index.json").exists()


def test_a_copy_not_signed_by_our_keys_is_fetched_again(key, tmp_path):
    repo = tmp_path / "repo"
    files = release(key, "2.0.0")
    stage(repo, Session(served(MASTER, files)), key[1])
    manifest = json.loads((repo / NAME / "2.0.0" / "manifest.json").read_text())
    del manifest["signature"]
    (repo / NAME / "2.0.0" / "manifest.json").write_text(json.dumps(manifest))
    assert not fleet_repo.live_signed(str(repo), NAME, "2.0.0", key[1])
    assert stage(repo, Session(served(MASTER, files)), key[1])["changed"] is True
    assert fleet_repo.live_signed(str(repo), NAME, "2.0.0", key[1])


def test_stage_with_a_pin_and_store_pin_never_go_below_a_newer_serial(key, tmp_path):
    repo = tmp_path / "repo"
    session = Session({**served(MASTER, release(key, "2.0.0")), **served(MASTER, release(key, "2.1.0"))})
    newer = fleet_sign.sign_pin(NAME, "east", "2.0.0", NOW + 10, key[0], signed_at=NOW)
    out = stage(repo, session, key[1], pin=newer)
    assert out["pinned"] is True and out["index"]["pin"]["serial"] == NOW + 10
    older = fleet_sign.sign_pin(NAME, "east", "2.1.0", NOW, key[0], signed_at=NOW)
    out = stage(repo, session, key[1], "2.1.0", pin=older)
    assert out["changed"] is True and "older than" in out["pin_skipped"]  # the staging still counts
    assert out["index"]["pin"]["version"] == "2.0.0" and sorted(out["index"]["versions"]) == ["2.0.0", "2.1.0"]
    with pytest.raises(fleet_release.ReleaseError, match="older than"):
        fleet_repo.store_pin(str(repo), NAME, older)
    index = fleet_repo.store_pin(str(repo), NAME, fleet_sign.sign_pin(NAME, "east", None, NOW + 20, key[0], NOW))
    assert index["pin"]["version"] is None and fleet_repo.read_index(str(repo), NAME) == index


def test_status_reports_live_versions_and_whether_the_pin_holds(key, tmp_path):
    repo = tmp_path / "repo"
    assert fleet_repo.status(str(repo), NAME, None) == {"staged": [], "pin": None, "pin_verified": False}
    stage(repo, Session(served(MASTER, release(key, "2.0.0"))), key[1],
          pin=fleet_sign.sign_pin(NAME, "east", "2.0.0", NOW, key[0], signed_at=NOW))
    holds = fleet_repo.status(str(repo), NAME, lambda pin: fleet_sign.verify_pin(pin, key[1], NAME, "east"))
    assert holds["staged"] == ["2.0.0"] and holds["pin_verified"] is True
    west = fleet_repo.status(str(repo), NAME, lambda pin: fleet_sign.verify_pin(pin, key[1], NAME, "west"))
    assert west["pin_verified"] is False and west["pin"] == holds["pin"]


def test_served_reads_the_nginx_log(tmp_path):
    log = tmp_path / "access.log"
    assert fleet_repo.served(str(log), NAME, "2.0.0") == {}  # no log yet
    log.write_text("\n".join(json.dumps(e) for e in [
        {"method": "GET", "uri": f"/kiosk-releases/{NAME}/2.0.0/app.bin", "remote_addr": "10.0.0.7", "status": 200},
        {"method": "GET", "uri": f"/kiosk-releases/{NAME}/2.0.0/manifest.json", "remote_addr": "10.0.0.8",
         "status": 200},
    ]) + "\nnot json\n")
    assert fleet_repo.served(str(log), NAME, "2.0.0") == {"10.0.0.7": [200]}
    with pytest.raises(fleet_release.ReleaseError, match=r"^kiosk_release:access_log: cannot read"):
        fleet_repo.served(str(tmp_path), NAME, "2.0.0")  # a directory


@pytest.mark.parametrize("keep, expected", [(2, 2), ("3", 3), (3.0, 3)])
def test_check_keep(keep, expected):
    assert fleet_repo.check_keep(keep) == expected


@pytest.mark.parametrize("keep, match", [(1, "below 2"), (True, "whole number"), ("x", "whole number"),
                                         (2.5, "whole number"), (float("inf"), "whole number"), (None, "whole")])
def test_check_keep_refuses(keep, match):
    with pytest.raises(ValueError, match=rf"^keep: .*{match}"):
        fleet_repo.check_keep(keep)


def test_prune_keeps_the_pin_its_previous_and_what_is_above_index_first(key, tmp_path):
    repo = tmp_path / "repo"
    versions = ["1.0.0", "1.1.0", "1.2.0", "2.0.0"]
    session = Session({k: v for version in versions for k, v in served(MASTER, release(key, version)).items()})
    for version in versions:
        stage(repo, session, key[1], version)
    assert fleet_repo.prune(str(repo), NAME) == ([], versions)  # no pin yet: nothing known to be unused
    fleet_repo.store_pin(str(repo), NAME, fleet_sign.sign_pin(NAME, "east", "1.2.0", NOW, key[0], signed_at=NOW))
    assert fleet_repo.prune_plan(fleet_repo.read_index(str(repo), NAME), 4) == ([], versions)  # keep: a floor
    removed, kept = fleet_repo.prune(str(repo), NAME)
    assert removed == ["1.0.0"] and kept == ["1.1.0", "1.2.0", "2.0.0"]
    assert sorted(fleet_repo.read_index(str(repo), NAME)["versions"]) == kept
    assert not (repo / NAME / "1.0.0").exists() and (repo / NAME / "1.1.0").exists()
    assert fleet_repo.prune(str(repo), NAME) == ([], kept)  # nothing more to do
    with pytest.raises(fleet_release.ReleaseError, match=r"^keep: 1 is below 2"):
        fleet_repo.prune(str(repo), NAME, 1)


def index_of(versions, pin=None):
    return {"versions": dict.fromkeys(versions, {}), "pin": None if pin is False else {"version": pin}}


@pytest.mark.parametrize("versions, pin, keep, removed, kept", [
    # the pin at the newest: it and the one before it
    (["1.0.0", "1.1.0", "1.2.0", "2.0.0"], "2.0.0", None, ["1.0.0", "1.1.0"], ["1.2.0", "2.0.0"]),
    # rolled back to an older version with newer ones staged: those stay (what it came from, pre-staged)
    (["1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0"], "1.2.0", None, ["1.0.0"], ["1.1.0", "1.2.0", "1.3.0", "2.0.0"]),
    # the previous is the newest below the pin, whatever order the index lists them in
    (["1.10.0", "1.9.0", "1.2.0", "1.11.0"], "1.11.0", None, ["1.2.0", "1.9.0"], ["1.10.0", "1.11.0"]),
    # no pin (none yet): all stay; frozen (pin version None): all stay
    (["1.0.0", "1.1.0", "1.2.0"], False, None, [], ["1.0.0", "1.1.0", "1.2.0"]),
    (["1.0.0", "1.1.0", "1.2.0"], None, None, [], ["1.0.0", "1.1.0", "1.2.0"]),
    # no pin with a keep floor: the keep newest, as the manual call always did
    (["1.0.0", "1.1.0", "1.2.0"], False, 2, ["1.0.0"], ["1.1.0", "1.2.0"]),
    # one version: nothing to prune
    (["1.0.0"], "1.0.0", None, [], ["1.0.0"]),
    (["1.0.0"], False, 2, [], ["1.0.0"]),
    # the pin at the oldest: no previous, everything above stays
    (["1.0.0", "1.1.0"], "1.0.0", None, [], ["1.0.0", "1.1.0"]),
    # a keep floor on top of the policy
    (["1.0.0", "1.1.0", "1.2.0", "1.3.0"], "1.3.0", 3, ["1.0.0"], ["1.1.0", "1.2.0", "1.3.0"]),
])
def test_prune_plan_policy(versions, pin, keep, removed, kept):
    assert fleet_repo.prune_plan(index_of(versions, pin), keep) == (removed, kept)


def test_bases_are_the_other_live_versions_newest_first(key, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    versions = ["1.0.0", "1.10.0", "1.9.0"]
    session = Session({k: v for version in versions + ["2.0.0"] for k, v in served(MASTER, release(key, version)).items()})
    for version in versions:
        stage(repo, session, key[1], version)
    (repo / NAME / "1.9.0" / "manifest.json").unlink()  # not live: no base
    assert fleet_repo.bases(str(repo), NAME, "2.0.0") == [str(repo / NAME / "1.10.0"), str(repo / NAME / "1.0.0")]
    assert fleet_repo.bases(str(repo), NAME, "1.10.0") == [str(repo / NAME / "1.0.0")]
    assert fleet_repo.bases(str(tmp_path / "empty"), NAME, "1.0.0") == []
    # stage hands them, and the pace, to the download
    seen = {}
    real = fleet_repo.fleet_fetch.fetch_release

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(fleet_repo.fleet_fetch, "fetch_release", spy)

    paced = []
    out = fleet_repo.stage(str(repo), NAME, "2.0.0", [("master", MASTER)], key[1], session, pace=paced.append)
    assert seen["bases"] == [str(repo / NAME / "1.10.0"), str(repo / NAME / "1.0.0")] and seen["pace"] == paced.append
    assert out["changed"] is True and out["fetched"] > 0 and sum(paced) == out["fetched"]  # every network byte paced


def test_a_rollback_staged_on_a_pi_that_holds_the_earlier_content_fetches_no_package_bytes(key, tmp_path):
    repo, good = tmp_path / "repo", b"good build\n" * 5000
    session = Session({**served(MASTER, release(key, "1.0.0", good)), **served(MASTER, release(key, "1.1.0")),
                       **served(MASTER, release(key, "1.1.1", good))})
    for version in ("1.0.0", "1.1.0"):
        assert stage(repo, session, key[1], version)["fetched"] > 0
    session.asked.clear()
    out = stage(repo, session, key[1], "1.1.1")
    assert out["changed"] is True and out["fetched"] == 0 and out["reused"] == len(good), out
    assert session.asked == [MASTER + f"{NAME}/1.1.1/manifest.json"]
    assert (repo / NAME / "1.1.1" / "app.bin").read_bytes() == good
    assert fleet_repo.live_signed(str(repo), NAME, "1.1.1", key[1])


def test_prune_keeps_the_versions_named_also_and_ignores_ones_not_staged():
    index = {"versions": dict.fromkeys(["1.0.0", "1.5.0", "2.0.0", "0.9.0"]), "pin": {"version": "2.0.0"}}
    assert fleet_repo.prune_plan(index) == (["0.9.0", "1.0.0"], ["1.5.0", "2.0.0"])
    assert fleet_repo.prune_plan(index, also=["1.0.0", "7.0.0"]) == (["0.9.0"], ["1.0.0", "1.5.0", "2.0.0"])
