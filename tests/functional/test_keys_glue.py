"""
The multi-master key glue as Salt runs it: ``kiosk_fleet.master_keys`` /
``kiosk_fleet.minion_config`` (execution module) and the states
``kiosk_fleet.master_key`` / ``autosign`` / ``minion_config`` through Salt's
own loaders, then ``states/kiosk_fleet/pi_master.sls`` and
``kiosk_minion.sls`` through ``salt-call --local``. Real RSA keys, scratch
directories (never /etc/salt), no daemon; no private key text may appear in
any return.
"""

import copy
import itertools
import json
import os
import pathlib

import pytest
import salt.config
import salt.loader
import salt.utils.crypt
import yaml
from salt.exceptions import CommandExecutionError

import fleet_inventory
import fleet_keys
from tests.support.release_minion import minion
from tests.support.salt_local import salt_call
from tests.support.topology import two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]
PI = "pi-east-1"
KIOSK = "kiosk-east-02"
LOADERS = itertools.count()


@pytest.fixture(scope="module")
def keys():
    """The campus pair, this Pi's own minion pair, and a stranger's pair."""
    return {"campus": fleet_keys.new_master_key_pair(), "pi": fleet_keys.new_master_key_pair(),
            "other": fleet_keys.new_master_key_pair()}


@pytest.fixture(scope="module")
def fleet():
    return two_campus_inventory(wol_port=40009)


def secret_text(keys):
    """Pieces of every private key of the test: none may show up in a return."""
    pieces = ["PRIVATE KEY"]
    for private, _ in keys.values():
        body = private.decode().splitlines()[1:-1]
        pieces += [body[3], body[-2]]
    return pieces


def assert_no_secret(keys, *returns):
    text = json.dumps(returns, default=str)
    for piece in secret_text(keys):
        assert piece not in text, "private key text in a return"


def load(root, minion_id, pillar, extra=None):
    """A minion's kiosk_fleet module and states through Salt's loaders, in a loader namespace of its own."""
    opts, _ = minion(root, minion_id, pillar, {"states_dirs": [str(REPO / "_states")], "test": False, **(extra or {})})
    base = f"salt.loaded.kfkeys{next(LOADERS)}"
    utils = salt.loader.utils(opts, loaded_base_name=base)
    mods = salt.loader.minion_mods(opts, utils=utils, loaded_base_name=base, whitelist=["kiosk_fleet", "config"])
    states = salt.loader.states(opts, mods, utils, {}, loaded_base_name=base, whitelist=["kiosk_fleet"])
    test_opts = copy.deepcopy(opts)
    test_opts["test"] = True
    test_states = salt.loader.states(test_opts, mods, utils, {}, loaded_base_name=base + "t", whitelist=["kiosk_fleet"])
    return opts, mods, States(states, test_states)


class States:
    """The state functions, loaded once with test=False and once with test=True; ``test`` picks."""

    def __init__(self, real, preview):
        self.loaded = {False: real, True: preview}
        self.test = False

    def __getitem__(self, name):
        return self.loaded[self.test][name]


def set_test(states, value):
    states.test = value


@pytest.fixture
def pi(tmp_path, keys, fleet):
    """A Pi minion: its own key in pki/, its campus slice as pillar, the master's pki_dir a scratch folder."""
    master_pki = tmp_path / "master-pki"
    opts, mods, states = load(tmp_path, PI, fleet_inventory.slice_for(fleet, PI),
                              {"kiosk_fleet": {"master_pki_dir": str(master_pki)}})
    (pathlib.Path(opts["pki_dir"]) / "minion.pem").write_bytes(keys["pi"][0])
    (pathlib.Path(opts["pki_dir"]) / "minion.pub").write_bytes(keys["pi"][1])
    return {"opts": opts, "mods": mods, "states": states, "master_pki": master_pki}


def sealed_for_pi(keys):
    return fleet_keys.seal(keys["campus"][0], keys["pi"][1]), keys["campus"][1].decode()


# --------------------------------------------------------------------------- module


def test_master_keys_lists_ids_with_salt_key_fingerprints(pi, keys):
    master_pki = pi["master_pki"]
    for folder, minion_id, key in [("minions", "kiosk-east-01", "pi"), ("minions_pre", "intruder", "other"),
                                   ("minions_rejected", "kiosk-west-01", "other"), ("minions_denied", PI, "other")]:
        (master_pki / folder).mkdir(parents=True, exist_ok=True)
        (master_pki / folder / minion_id).write_bytes(keys[key][1])
    (master_pki / "minions" / ".hidden").write_text("x")
    (master_pki / "minions" / "broken").write_text("not a key")
    (master_pki / "master.pub").write_bytes(keys["campus"][1])
    (master_pki / "master.pem").write_bytes(keys["campus"][0])
    out = pi["mods"]["kiosk_fleet.master_keys"]()
    assert out["pki_dir"] == str(master_pki)
    assert out["master"] == salt.utils.crypt.pem_finger(str(master_pki / "master.pub"), sum_type="sha256")
    assert out["accepted"] == {"kiosk-east-01": fleet_keys.fingerprint(keys["pi"][1]), "broken": "invalid key"}
    assert out["pending"] == {"intruder": fleet_keys.fingerprint(keys["other"][1])}
    assert list(out["rejected"]) == ["kiosk-west-01"] and list(out["denied"]) == [PI]
    assert_no_secret(keys, out)


def test_master_keys_without_a_master_names_the_setting(pi):
    with pytest.raises(CommandExecutionError, match="kiosk_fleet:master_pki_dir"):
        pi["mods"]["kiosk_fleet.master_keys"]()


def test_kiosk_minion_config_from_its_slice(tmp_path, fleet):
    _, mods, _ = load(tmp_path, KIOSK, fleet_inventory.slice_for(fleet, KIOSK),
                      {"kiosk_fleet": {"minion_overrides": {"acceptance_wait_time": 2}}})
    config = mods["kiosk_fleet.minion_config"]()
    inventory = fleet_inventory.validate(fleet["kiosk_fleet"])
    assert config == fleet_keys.kiosk_minion_config(inventory, KIOSK, acceptance_wait_time=2)
    assert config["master"] == ["127.0.2.2:4506", "127.0.2.3:4506"]


def test_minion_config_refuses_an_unknown_override(tmp_path, fleet):
    _, mods, _ = load(tmp_path, KIOSK, fleet_inventory.slice_for(fleet, KIOSK),
                      {"kiosk_fleet": {"minion_overrides": {"master_type": "failover"}}})
    with pytest.raises(CommandExecutionError, match="master_type"):
        mods["kiosk_fleet.minion_config"]()


# --------------------------------------------------------------------------- master_key state


def test_master_key_test_then_install_then_unchanged(pi, keys):
    states, master_pki = pi["states"], pi["master_pki"]
    sealed, public = sealed_for_pi(keys)
    fp = fleet_keys.fingerprint(public)
    set_test(states, True)
    preview = states["kiosk_fleet.master_key"](str(master_pki), sealed=sealed, public=public)
    assert preview["result"] is None and preview["changes"] == {"fingerprint": {"old": None, "new": fp}}
    assert not master_pki.exists()
    set_test(states, False)
    done = states["kiosk_fleet.master_key"](str(master_pki), sealed=sealed, public=public)
    assert done["result"] is True and done["changes"] == {"fingerprint": {"old": None, "new": fp}}, done
    assert (master_pki / "master.pem").read_bytes() == keys["campus"][0]
    assert (master_pki / "master.pub").read_bytes() == keys["campus"][1]
    again = states["kiosk_fleet.master_key"](str(master_pki), sealed=fleet_keys.seal(keys["campus"][0], keys["pi"][1]),
                                             public=public)
    assert again["result"] is True and again["changes"] == {}, again
    assert_no_secret(keys, preview, done, again)


def test_master_key_replaces_a_pair_and_keeps_the_previous(pi, keys):
    states, master_pki = pi["states"], pi["master_pki"]
    fleet_keys.write_master_key_pair(str(master_pki), *keys["other"])
    sealed, public = sealed_for_pi(keys)
    done = states["kiosk_fleet.master_key"](str(master_pki), sealed=sealed, public=public)
    assert done["result"] is True
    assert done["changes"]["fingerprint"] == {"old": fleet_keys.fingerprint(keys["other"][1]),
                                              "new": fleet_keys.fingerprint(public)}
    assert (master_pki / "master.pem.previous").read_bytes() == keys["other"][0]
    assert_no_secret(keys, done)


def wrong_inputs(keys):
    sealed, public = sealed_for_pi(keys)
    parts = sealed.split(".")
    tampered = ".".join(parts[:3] + [("A" if parts[3][0] != "A" else "B") + parts[3][1:]])
    return {
        "sealed to another key": (fleet_keys.seal(keys["campus"][0], keys["other"][1]), public, "sealed"),
        "public of another pair": (sealed, keys["other"][1].decode(), "public"),
        "tampered envelope": (tampered, public, "sealed"),
        "a private key as public": (sealed, keys["campus"][0].decode(), "public"),
        "no sealed": (None, public, "sealed"),
        "no public": (sealed, "", "public"),
    }


@pytest.mark.parametrize("case", ["sealed to another key", "public of another pair", "tampered envelope",
                                  "a private key as public", "no sealed", "no public"])
def test_master_key_refuses_wrong_input_and_writes_nothing(pi, keys, case):
    states, master_pki = pi["states"], pi["master_pki"]
    fleet_keys.write_master_key_pair(str(master_pki), *keys["other"])
    before = {p.name: p.read_bytes() for p in master_pki.iterdir()}
    sealed, public, field = wrong_inputs(keys)[case]
    for test in (True, False):
        set_test(states, test)
        out = states["kiosk_fleet.master_key"](str(master_pki), sealed=sealed, public=public)
        assert out["result"] is False and out["changes"] == {}, out
        assert out["comment"].startswith(field) and "nothing written" in out["comment"], out
        assert_no_secret(keys, out)
    assert {p.name: p.read_bytes() for p in master_pki.iterdir()} == before


def test_master_key_without_the_minions_own_key_fails(pi, keys):
    os.unlink(pathlib.Path(pi["opts"]["pki_dir"]) / "minion.pem")
    out = pi["states"]["kiosk_fleet.master_key"](str(pi["master_pki"]), *sealed_for_pi(keys))
    assert out["result"] is False and "minion.pem" in out["comment"] and not pi["master_pki"].exists()


# --------------------------------------------------------------------------- autosign and minion_config states


def test_autosign_renders_the_pis_campus_only(pi, tmp_path, keys):
    states = pi["states"]
    path = tmp_path / "autosign.conf"
    set_test(states, True)
    preview = states["kiosk_fleet.autosign"](str(path))
    assert preview["result"] is None and not path.exists()
    set_test(states, False)
    done = states["kiosk_fleet.autosign"](str(path))
    assert done["result"] is True
    ids = ["kiosk-east-01", "kiosk-east-02", "pi-east-1", "pi-east-2"]
    assert done["changes"] == {"added": ids, "removed": []}
    listed = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert listed == ids
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # Salt ignores an autosign file others can write
    path.write_text("# old\nkiosk-west-01\npi-east-1\n")
    fixed = states["kiosk_fleet.autosign"](str(path))
    assert fixed["changes"] == {"added": ["kiosk-east-01", "kiosk-east-02", "pi-east-2"], "removed": ["kiosk-west-01"]}
    assert states["kiosk_fleet.autosign"](str(path))["changes"] == {}


def test_autosign_on_a_kiosk_or_an_unknown_id_writes_nothing(tmp_path, fleet):
    for minion_id in (KIOSK, "stranger"):
        root = tmp_path / minion_id
        _, _, states = load(root, minion_id, fleet_inventory.slice_for(fleet, minion_id))
        out = states["kiosk_fleet.autosign"](str(root / "autosign.conf"))
        assert out["result"] is False and not (root / "autosign.conf").exists(), out


def test_minion_config_state_writes_a_file_salt_reads(tmp_path, fleet, keys):
    _, _, states = load(tmp_path / "k", KIOSK, fleet_inventory.slice_for(fleet, KIOSK))
    conf = tmp_path / "conf"
    (conf / "minion.d").mkdir(parents=True)
    (conf / "minion").write_text(yaml.safe_dump({"master": "salt", "id": KIOSK, "root_dir": str(tmp_path / "r")}))
    path = conf / "minion.d" / "kiosk_fleet.conf"
    set_test(states, True)
    preview = states["kiosk_fleet.minion_config"](str(path))
    assert preview["result"] is None and preview["changes"]["master"]["new"] == ["127.0.2.2:4506", "127.0.2.3:4506"]
    assert not path.exists()
    set_test(states, False)
    done = states["kiosk_fleet.minion_config"](str(path))
    assert done["result"] is True and done["changes"]["master_type"] == {"old": None, "new": "str"}
    assert states["kiosk_fleet.minion_config"](str(path))["changes"] == {}
    # the minion config Salt builds from the main file and minion.d/ (the file wins over "master: salt")
    opts = salt.config.minion_config(str(conf / "minion"), cache_minion_id=False)
    assert opts["master"] == ["127.0.2.2:4506", "127.0.2.3:4506"]
    assert opts["master_type"] == "str" and opts["master_alive_interval"] == 3600 and opts["publish_port"] == 4505
    assert_no_secret(keys, preview, done)


# --------------------------------------------------------------------------- the SLS files


def local_minion(root, minion_id, pillar, settings):
    """A ``salt-call --local`` minion: the repo's states, a pillar file, settings under kiosk_fleet."""
    root = pathlib.Path(root)
    (root / "pillar").mkdir(parents=True)
    (root / "pillar" / "top.sls").write_text("base:\n  '*':\n    - fleet\n")
    (root / "pillar" / "fleet.sls").write_text(yaml.safe_dump(pillar))
    (root / "minion").write_text(yaml.safe_dump({
        "id": minion_id, "file_client": "local", "enable_fqdns_grains": False, "root_dir": str(root / "r"),
        "user": "root", "module_dirs": [str(REPO)], "states_dirs": [str(REPO / "_states")],
        "file_roots": {"base": [str(REPO / "states")]}, "pillar_roots": {"base": [str(root / "pillar")]},
        "kiosk_fleet": settings,
    }))
    return root


def changed(states):
    return sorted(s["__id__"] for s in states.values() if s["changes"])


def local_pi(tmp_path, fleet, keys, pinned):
    """A Pi for salt-call --local: its own key, ``pinned`` as the master key its minion accepts, scratch master dirs."""
    scratch = tmp_path / "scratch"
    settings = {"master_pki_dir": str(scratch / "pki"), "master_config_dir": str(scratch / "master.d"),
                "autosign_file": str(scratch / "autosign.conf"), "restart": False}
    root = local_minion(tmp_path / "pi", PI, fleet_inventory.slice_for(fleet, PI), settings)
    own = root / "r" / "etc" / "salt" / "pki" / "minion"
    own.mkdir(parents=True)
    (own / "minion.pem").write_bytes(keys["pi"][0])
    (own / "minion.pub").write_bytes(keys["pi"][1])
    (own / "minion_master.pub").write_bytes(pinned)
    return root, own, scratch


def test_pi_master_sls_installs_key_autosign_and_config(tmp_path, fleet, keys):
    root, own, scratch = local_pi(tmp_path, fleet, keys, keys["other"][1])
    sealed, public = sealed_for_pi(keys)
    pillar = "pillar=" + json.dumps({"kiosk_fleet_master_key": {"sealed": sealed, "public": public}})
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.pi_master", pillar)
    assert code == 0, (states, err[-2000:])
    assert changed(states) == ["kiosk_fleet_autosign", "kiosk_fleet_campus_key", "kiosk_fleet_campus_key_pinned",
                               "kiosk_fleet_pi_master_config"]
    assert (scratch / "pki" / "master.pem").read_bytes() == keys["campus"][0]
    # the Pi's own minion now accepts its master's new key
    assert (own / "minion_master.pub").read_bytes() == keys["campus"][1]
    assert yaml.safe_load((scratch / "master.d" / "kiosk_fleet.conf").read_text()) == {
        "auto_accept": False, "open_mode": False, "autosign_file": str(scratch / "autosign.conf"),
        "tcp_keepalive": True, "tcp_keepalive_idle": 60, "tcp_keepalive_cnt": 3, "tcp_keepalive_intvl": 20,
        "worker_threads": 3}
    assert "kiosk-east-02" in (scratch / "autosign.conf").read_text()
    assert "kiosk-west" not in (scratch / "autosign.conf").read_text()
    code, again, err = salt_call(root, "state.apply", "kiosk_fleet.pi_master", pillar, "test=True")
    assert code == 0 and changed(again) == [], (again, err[-2000:])
    assert_no_secret(keys, states, again)


def test_pi_master_sls_with_a_wrong_envelope_changes_nothing_the_minion_trusts(tmp_path, fleet, keys):
    root, own, scratch = local_pi(tmp_path, fleet, keys, keys["other"][1])
    wrong = fleet_keys.seal(keys["campus"][0], keys["other"][1])
    pillar = "pillar=" + json.dumps({"kiosk_fleet_master_key": {"sealed": wrong, "public": keys["campus"][1].decode()}})
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.pi_master", pillar)
    assert code != 0, states
    assert (own / "minion_master.pub").read_bytes() == keys["other"][1]
    assert not (scratch / "pki").exists()
    assert_no_secret(keys, states)


def test_master_trust_sls_pins_the_campus_key_on_a_kiosk(tmp_path, fleet, keys):
    root = local_minion(tmp_path / "kiosk", KIOSK, fleet_inventory.slice_for(fleet, KIOSK), {"restart": False})
    pinned = root / "r" / "etc" / "salt" / "pki" / "minion" / "minion_master.pub"
    pinned.parent.mkdir(parents=True)
    pinned.write_bytes(keys["other"][1])
    pillar = "pillar=" + json.dumps({"kiosk_fleet_master_key": {"public": keys["campus"][1].decode()}})
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.master_trust", pillar, "test=True")
    assert code == 0 and pinned.read_bytes() == keys["other"][1], (states, err[-2000:])
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.master_trust", pillar)
    assert code == 0 and changed(states) == ["kiosk_fleet_master_trust"], (states, err[-2000:])
    [ret] = states.values()
    assert ret["changes"] == {"fingerprint": {"old": fleet_keys.fingerprint(keys["other"][1]),
                                              "new": fleet_keys.fingerprint(keys["campus"][1])}}
    assert pinned.read_bytes() == keys["campus"][1]
    # a private key, or no key, is refused and the pin stays
    for bad in ({"public": keys["campus"][0].decode()}, {}):
        code, states, _ = salt_call(root, "state.apply", "kiosk_fleet.master_trust",
                                    "pillar=" + json.dumps({"kiosk_fleet_master_key": bad}))
        assert code != 0 and pinned.read_bytes() == keys["campus"][1], states
        assert_no_secret(keys, states)


def test_master_pub_state_compares_as_salt_does(pi, keys, tmp_path):
    states = pi["states"]
    path = tmp_path / "minion_master.pub"
    path.write_bytes(keys["campus"][1].replace(b"\n", b"\r\n") + b"\n\n")  # Salt: the same key (clean_key)
    same = states["kiosk_fleet.master_pub"](str(path), public=keys["campus"][1].decode())
    assert same["result"] is True and same["changes"] == {}, same
    for bad in ("not a key", None, "relative"):
        out = states["kiosk_fleet.master_pub"](str(path) if bad != "relative" else "minion_master.pub",
                                               public=bad if bad != "relative" else keys["campus"][1].decode())
        assert out["result"] is False and out["changes"] == {}, out


def test_kiosk_minion_sls_writes_the_minion_d_file(tmp_path, fleet, keys):
    target = tmp_path / "scratch" / "minion.d" / "kiosk_fleet.conf"
    slice_ = copy.deepcopy(fleet_inventory.slice_for(fleet, KIOSK))
    root = local_minion(tmp_path / "kiosk", KIOSK, slice_, {"minion_config_file": str(target), "restart": False})
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.kiosk_minion")
    assert code == 0 and changed(states) == ["kiosk_fleet_minion_config"], (states, err[-2000:])
    written = yaml.safe_load(target.read_text())
    assert written["master"] == ["127.0.2.2:4506", "127.0.2.3:4506"] and written["master_type"] == "str"
    code, again, err = salt_call(root, "state.apply", "kiosk_fleet.kiosk_minion", "test=True")
    assert code == 0 and changed(again) == [], (again, err[-2000:])


def test_restarts_are_scheduled_after_the_return_and_previewed_with_test_true(tmp_path, fleet, keys):
    root, _, scratch = local_pi(tmp_path, fleet, keys, keys["other"][1])
    config = yaml.safe_load((root / "minion").read_text())
    config["kiosk_fleet"].update(restart=True, restart_delay=7)
    (root / "minion").write_text(yaml.safe_dump(config))
    pillar = "pillar=" + json.dumps({"kiosk_fleet_master_key": dict(zip(("sealed", "public"), sealed_for_pi(keys)))})
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.pi_master", pillar, "test=True")
    assert code == 0, (states, err[-2000:])
    [restart] = [s for s in states.values() if s["__id__"] == "kiosk_fleet_pi_master_restart"]
    assert restart["result"] is None and "cmd.run_all" in restart["comment"], restart
    assert not (scratch / "pki").exists()
    code, shown, err = salt_call(root, "state.show_sls", "kiosk_fleet.pi_master", pillar)
    [call] = [step for step in shown["kiosk_fleet_pi_master_restart"]["module"] if isinstance(step, dict) and "cmd.run_all" in step]
    assert {"cmd": ["systemd-run", "--on-active=7", "--timer-property=AccuracySec=1s", "systemctl", "restart", "salt-master"]} in call["cmd.run_all"]
    # the runner staggers the Pis of a campus: the delay in the key's pillar wins over the setting
    sealed, public = sealed_for_pi(keys)
    for delay, expected in ((40, "--on-active=40"), ("soon", None), (0, None), (True, None)):
        pillar = "pillar=" + json.dumps({"kiosk_fleet_master_key": {"sealed": sealed, "public": public, "restart_delay": delay}})
        code, states, err = salt_call(root, "state.apply", "kiosk_fleet.pi_master", pillar, "test=True")
        [restart] = [s for s in states.values() if s["__id__"] == "kiosk_fleet_pi_master_restart"]
        if expected:
            code, shown, err = salt_call(root, "state.show_sls", "kiosk_fleet.pi_master", pillar)
            assert expected in json.dumps(shown["kiosk_fleet_pi_master_restart"]), shown
            assert restart["result"] is None, restart
        else:
            assert code != 0 and restart["result"] is False and restart["name"].startswith("restart_delay: "), restart
    kiosk = local_minion(tmp_path / "kiosk", KIOSK, fleet_inventory.slice_for(fleet, KIOSK),
                         {"minion_config_file": str(tmp_path / "k.conf"), "restart": True})
    code, states, err = salt_call(kiosk, "state.apply", "kiosk_fleet.kiosk_minion", "test=True")
    assert code == 0, (states, err[-2000:])
    [restart] = [s for s in states.values() if s["__id__"] == "kiosk_fleet_minion_restart"]
    assert restart["result"] is None and "cmd.run_all" in restart["comment"] and not (tmp_path / "k.conf").exists()
