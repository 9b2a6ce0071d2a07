"""
The key runners of ``kiosk_fleet`` (campus_keygen, campus_keys, keys,
autosign) loaded by Salt's runner loader with temporary master opts, a real
pki dir holding real RSA keys of the Pis, and the LocalClient stood in (no
daemon here: tests/integration/test_keys.py runs campus_keys on the
topology). What is tested is the glue: the files made and kept, who is sent
what (each envelope opened here with the Pi's own private key), and how
answers, silence and failures are reported, never with key text.
"""

import json
import logging
import os
import pathlib
import stat
import threading

import pytest
import salt.client
import salt.config
import salt.loader
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import fleet_keys
from tests.support.topology import two_campus_inventory
from tests.unit.test_runner_calls import SILENT, FakeClient

REPO = pathlib.Path(__file__).resolve().parents[2]
PIS = ("pi-east-1", "pi-east-2", "pi-west-1", "pi-west-2")


@pytest.fixture(scope="module")
def pi_keys():
    """``{pi: (private PEM, public PEM)}``: real RSA keys in Salt's minion key format."""
    keys = {}
    for pi in PIS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        keys[pi] = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()),
                    key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return keys


class Minions:
    """What the stand-in LocalClient (test_runner_calls.FakeClient) answers and the jobs it was sent."""

    def __init__(self):
        self.jobs = []
        self.barrier = None
        self.answer = lambda fun, tgt, arg, kwarg: []

    def reply(self, fun, tgt, arg, kwarg):
        if self.barrier is not None:  # passes only when every job is in flight at once
            self.barrier.wait()
        return self.answer(fun, tgt, arg, kwarg)


@pytest.fixture
def minions(monkeypatch):
    """Set ``minions.answer`` (``(minion, ret, retcode)`` triples); ``minions.jobs`` lists the jobs sent."""
    fake = Minions()
    monkeypatch.setattr(salt.client, "get_local_client", lambda *args, **kwargs: FakeClient(fake.reply, fake.jobs))
    return fake


class Master:
    """The loaded runners and the paths of one temporary top master."""

    def __init__(self, tmp_path, pi_keys, accepted=PIS, keys_dir=True):
        self.root = tmp_path
        self.pki = tmp_path / "pki"
        self.keys_dir = tmp_path / "campus-keys"
        self.autosign_file = tmp_path / "autosign.conf"
        for sub in ("minions", "minions_pre", "minions_rejected", "minions_denied"):
            (self.pki / sub).mkdir(parents=True)
        for pi in accepted:
            (self.pki / "minions" / pi).write_bytes(pi_keys[pi][1])
        fleet = tmp_path / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(two_campus_inventory(wol_port=9)))
        opts = salt.config.master_config(None)
        conf = {"data": str(fleet)}
        if keys_dir:
            conf["campus_keys_dir"] = str(self.keys_dir)
        opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(self.pki),
                     "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                     "kiosk_fleet": conf, "__role": "master", "autosign_file": str(self.autosign_file),
                     "file_roots": {"base": [str(REPO / "states")]}})
        self.runners = salt.loader.runner(opts, utils=salt.loader.utils(opts))

    def __call__(self, name, **kwargs):
        return self.runners[f"kiosk_fleet.{name}"](**kwargs)

    @property
    def retcode(self):
        return self.runners.pack["__context__"]["retcode"]

    def pair(self, campus):
        return ((self.keys_dir / f"{campus}.pem").read_bytes(), (self.keys_dir / f"{campus}.pub").read_bytes())


@pytest.fixture
def master(tmp_path, pi_keys):
    return Master(tmp_path, pi_keys)


def key_text_in(text, *pems):
    """True when ``text`` holds any PEM armor or any body line of ``pems``."""
    if "-----BEGIN" in text or "PRIVATE KEY" in text:
        return True
    # full 64-character body lines only: a PEM's short last line (a public key's ends in "IDAQAB")
    # can occur by chance in other base64 text of a log
    return any(len(line) >= 64 and line.decode() in text for pem in pems for line in pem.splitlines()[1:-1])


# ---------------------------------------------------------------- campus_keygen


def test_keygen_makes_a_pair_per_inventory_campus_and_returns_fingerprints_only(master):
    ret = master("campus_keygen")
    assert ret["result"] is True and ret["retcode"] == 0 and master.retcode == 0
    assert sorted(ret["campuses"]) == ["east", "west"]
    assert stat.S_IMODE(os.stat(master.keys_dir).st_mode) == 0o700
    for campus in ("east", "west"):
        private, public = master.pair(campus)
        assert stat.S_IMODE(os.stat(master.keys_dir / f"{campus}.pem").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(master.keys_dir / f"{campus}.pub").st_mode) == 0o644
        assert fleet_keys.same_public_key(fleet_keys.public_key_of(private), public)
        assert ret["campuses"][campus] == {"fingerprint": fleet_keys.fingerprint(public), "previous": None}
        assert not key_text_in(json.dumps(ret), private, public)
    assert master.pair("east") != master.pair("west")


def test_keygen_refuses_to_replace_a_pair_and_writes_nothing(master):
    master("campus_keygen", campus="east")
    before = master.pair("east")
    ret = master("campus_keygen")  # west is new, east exists: the whole run is refused
    assert ret["result"] is False and ret["retcode"] == 1 and master.retcode == 1
    assert ret["error"].startswith("campus: east already has a key pair") and "rotate=True" in ret["error"]
    assert master.pair("east") == before
    assert not (master.keys_dir / "west.pem").exists() and not (master.keys_dir / "east.pem.previous").exists()
    half = master.keys_dir / "west.pub"
    half.write_bytes(before[1])  # half a pair counts as a pair
    assert master("campus_keygen", campus="west")["error"].startswith("campus: west already has")


def test_keygen_rotate_keeps_the_previous_pair_beside_the_new(master):
    first = master("campus_keygen", campus="east")["campuses"]["east"]["fingerprint"]
    old = master.pair("east")
    ret = master("campus_keygen", campus="east", rotate=True)
    assert ret["result"] is True and ret["rotated"] is True
    new = master.pair("east")
    assert new != old and ret["campuses"]["east"]["previous"] == first
    assert ret["campuses"]["east"]["fingerprint"] == fleet_keys.fingerprint(new[1]) != first
    assert (master.keys_dir / "east.pem.previous").read_bytes() == old[0]
    assert (master.keys_dir / "east.pub.previous").read_bytes() == old[1]
    assert stat.S_IMODE(os.stat(master.keys_dir / "east.pem.previous").st_mode) == 0o600
    assert not (master.keys_dir / "west.pem").exists()  # only the campus named
    master("campus_keygen", campus="east", rotate=True)  # the next rotation keeps the one before only
    assert (master.keys_dir / "east.pem.previous").read_bytes() == new[0]


def test_keygen_refuses_unknown_campuses_bad_arguments_and_a_missing_config(master, tmp_path, pi_keys):
    ret = master("campus_keygen", campus="north")
    assert ret["result"] is False and master.retcode == 1
    assert ret["error"].startswith("campus: unknown campus north")
    assert master("campus_keygen", campus="east,north")["error"].startswith("campus: unknown campus north")
    assert master("campus_keygen", rotate="yes")["error"].startswith("rotate: ")
    assert not master.keys_dir.exists()
    bare = Master(tmp_path / "bare", pi_keys, keys_dir=False)
    ret = bare("campus_keygen", campus="east")
    assert ret["result"] is False and ret["error"].startswith("kiosk_fleet.campus_keys_dir: None is not an absolute")


# ---------------------------------------------------------------- campus_keys


def applied(changed):
    """A state.apply return of kiosk_fleet.pi_master."""
    return {"file_|-master_key_|-/etc/salt/pki/master_|-managed": {
        "result": True, "changes": {"master.pub": "replaced"} if changed else {}, "comment": "", "__id__": "key"}}


def test_campus_keys_seals_the_campus_key_to_each_pis_accepted_key_only(master, minions, pi_keys):
    master("campus_keygen")
    minions.barrier = threading.Barrier(len(PIS), timeout=20)  # one job per Pi, all in flight at once
    minions.answer = lambda fun, tgt, arg, kwarg: [(tgt[0], applied(tgt[0] != "pi-west-2"), 0)]
    ret = master("campus_keys")
    assert ret["result"] is True and ret["retcode"] == 0 and master.retcode == 0
    assert ret["changed"] == ["pi-east-1", "pi-east-2", "pi-west-1"] and ret["unchanged"] == ["pi-west-2"]
    assert ret["pis"]["pi-east-1"] == {"campus": "east", "status": "changed", "restart_in_s": 10}
    assert ret["pis"]["pi-east-2"] == {"campus": "east", "status": "changed", "restart_in_s": 40}
    assert ret["pis"]["pi-west-2"] == {"campus": "west", "status": "unchanged"}
    assert sorted(job["tgt"][0] for job in minions.jobs) == list(PIS)
    for job in minions.jobs:
        pi = job["tgt"][0]
        campus = pi.split("-")[1]
        private, public = master.pair(campus)
        assert len(job["tgt"]) == 1 and job["fun"] == "state.apply" and job["arg"] == ["kiosk_fleet.pi_master"]
        assert job["kwarg"]["test"] is False
        sent = job["kwarg"]["pillar"]["kiosk_fleet_master_key"]
        # the Pis of a campus restart one after another (stagger 30 s), the kiosks keep the others
        assert sent["restart_delay"] == {"1": 10, "2": 40}[pi[-1]]
        assert sent["public"] == public.decode()
        assert private not in sent["sealed"].encode() and not key_text_in(sent["sealed"], private)
        assert fleet_keys.unseal(sent["sealed"], pi_keys[pi][0]) == private  # the Pi's own key opens it
        for other in PIS:
            if other != pi:  # no other Pi's key does
                with pytest.raises(fleet_keys.CampusKeyError):
                    fleet_keys.unseal(sent["sealed"], pi_keys[other][0])
    assert ret["campuses"]["east"] == {"fingerprint": fleet_keys.fingerprint(master.pair("east")[1])}


def test_campus_keys_seals_to_the_top_masters_key_not_to_another(master, minions, pi_keys):
    """The key on file under the Pi's id on this master decides, even if it is not the Pi's real one."""
    master("campus_keygen", campus="east")
    (master.pki / "minions" / "pi-east-1").write_bytes(pi_keys["pi-west-1"][1])
    minions.answer = lambda fun, tgt, arg, kwarg: [(tgt[0], applied(True), 0)]
    master("campus_keys", campus="east")
    job = next(j for j in minions.jobs if j["tgt"] == ["pi-east-1"])
    sealed = job["kwarg"]["pillar"]["kiosk_fleet_master_key"]["sealed"]
    with pytest.raises(fleet_keys.CampusKeyError):
        fleet_keys.unseal(sealed, pi_keys["pi-east-1"][0])
    assert fleet_keys.unseal(sealed, pi_keys["pi-west-1"][0]) == master.pair("east")[0]


def test_a_pi_without_an_accepted_key_is_reported_and_sent_nothing(tmp_path, pi_keys, minions):
    master = Master(tmp_path, pi_keys, accepted=("pi-east-1",))
    (master.pki / "minions_pre" / "pi-east-2").write_bytes(pi_keys["pi-east-2"][1])  # pending is not accepted
    master("campus_keygen", campus="east")
    minions.answer = lambda fun, tgt, arg, kwarg: [(tgt[0], applied(False), 0)]
    ret = master("campus_keys", campus="east")
    assert ret["result"] is False and ret["retcode"] == 1 and master.retcode == 1
    assert [job["tgt"] for job in minions.jobs] == [["pi-east-1"]]
    assert ret["no_key"] == ["pi-east-2"] and ret["unchanged"] == ["pi-east-1"]
    assert ret["pis"]["pi-east-2"]["status"] == "no_key"
    assert "no key of pi-east-2 accepted on this master" in ret["pis"]["pi-east-2"]["reason"]
    assert "pi-east-2 (no_key)" in ret["error"]


def test_silent_failed_and_forged_pis_fail_the_run(master, minions, pi_keys, caplog):
    master("campus_keygen")
    sealed_seen = []

    def answer(fun, tgt, arg, kwarg):
        pi = tgt[0]
        sealed = kwarg["pillar"]["kiosk_fleet_master_key"]["sealed"]
        sealed_seen.append(sealed)
        return {
            "pi-east-1": [(pi, applied(True), 0)],
            "pi-east-2": [(pi, SILENT, 1)],
            # a state that fails and, badly, quotes what it was given: withheld
            "pi-west-1": [(pi, {"key": {"result": False, "comment": f"cannot open {sealed}", "changes": {},
                                        "__id__": "key"}}, 2)],
            "pi-west-2": [(pi, applied(True), 0), (pi, applied(False), 0)],  # a forged second return
        }[pi]

    minions.answer = answer
    with caplog.at_level(logging.DEBUG):
        ret = master("campus_keys")
    assert ret["result"] is False and ret["retcode"] == 1 and master.retcode == 1
    assert ret["changed"] == ["pi-east-1"] and ret["failed"] == ["pi-west-1"]
    assert ret["silent"] == ["pi-east-2", "pi-west-2"]
    assert ret["pis"]["pi-west-1"]["reason"].startswith("(the answer quoted key material; withheld")
    assert "forged" in ret["pis"]["pi-west-2"]["reason"]
    assert ret["error"] == ("campus key not applied on pi-east-2 (silent), pi-west-1 (failed), "
                            "pi-west-2 (silent)")
    shown = json.dumps(ret) + caplog.text
    assert len(sealed_seen) == 4 and not any(s in shown for s in sealed_seen)
    for campus in ("east", "west"):
        assert not key_text_in(shown, *master.pair(campus))
    assert "conflicting returns from pi-west-2" in caplog.text
    minions.answer = lambda fun, tgt, arg, kwarg: [(tgt[0], applied(False), 0)]
    assert master("campus_keys")["result"] is True and master.retcode == 0  # the next good run clears it


def test_campus_keys_test_mode_reports_pending(master, minions):
    master("campus_keygen", campus="west")
    pending = {"key": {"result": None, "changes": {}, "comment": "would replace", "__id__": "key"}}
    minions.answer = lambda fun, tgt, arg, kwarg: [(tgt[0], pending, 0)]
    ret = master("campus_keys", campus="west", test=True, stagger=0)
    assert ret["result"] is True and ret["test"] is True and ret["pending"] == ["pi-west-1", "pi-west-2"]
    assert all(job["kwarg"]["test"] is True for job in minions.jobs)
    assert [job["kwarg"]["pillar"]["kiosk_fleet_master_key"]["restart_delay"] for job in minions.jobs] == [10, 10]


def test_campus_keys_refuses_without_a_sound_pair_or_with_bad_arguments(master, minions):
    ret = master("campus_keys", campus="east")
    assert ret["result"] is False and master.retcode == 1
    assert ret["error"].startswith("campus: east has no readable key pair") and "campus_keygen" in ret["error"]
    master("campus_keygen")
    (master.keys_dir / "east.pub").write_bytes(master.pair("west")[1])  # a hand-made mix-up
    assert "does not match" in master("campus_keys", campus="east")["error"]
    assert master("campus_keys", campus="north")["error"].startswith("campus: unknown campus north")
    assert master("campus_keys", campus="west", test="no")["error"].startswith("test: ")
    assert master("campus_keys", campus="west", timeout=0)["error"].startswith("timeout: ")
    assert master("campus_keys", campus="west", stagger=-1)["error"].startswith("stagger: ")
    assert minions.jobs == []


# ---------------------------------------------------------------- campus_trust


def test_campus_trust_pins_the_public_key_on_each_campuss_kiosks(master, minions):
    master("campus_keygen")
    minions.barrier = threading.Barrier(2, timeout=20)  # one job per campus, both in flight at once
    minions.answer = lambda fun, tgt, arg, kwarg: [(k, applied(k != "kiosk-west-02"), 0) for k in tgt]
    ret = master("campus_trust")
    assert ret["result"] is True and ret["retcode"] == 0 and master.retcode == 0
    assert sorted((job["tgt"], job["arg"]) for job in minions.jobs) == [
        (["kiosk-east-01", "kiosk-east-02"], ["kiosk_fleet.master_trust"]),
        (["kiosk-west-01", "kiosk-west-02"], ["kiosk_fleet.master_trust"])]
    for job in minions.jobs:
        campus = job["tgt"][0].split("-")[1]
        private, public = master.pair(campus)
        assert job["kwarg"] == {"test": False, "pillar": {"kiosk_fleet_master_key": {"public": public.decode()}}}
        sent = json.dumps(job["kwarg"])  # the public key only: no armor or line of the private one
        assert "PRIVATE" not in sent and not any(line.decode() in sent for line in private.splitlines()[1:-1])
    assert ret["changed"] == ["kiosk-east-01", "kiosk-east-02", "kiosk-west-01"]
    assert ret["unchanged"] == ["kiosk-west-02"] and "no_key" not in ret
    assert ret["kiosks"]["kiosk-west-02"] == {"campus": "west", "status": "unchanged"}
    assert ret["campuses"]["west"]["fingerprint"] == fleet_keys.fingerprint(master.pair("west")[1])


def test_campus_trust_fails_when_a_kiosk_misses_the_key(master, minions):
    master("campus_keygen", campus="east")
    minions.answer = lambda fun, tgt, arg, kwarg: [
        ("kiosk-east-01", {"pin": {"result": False, "comment": "not an RSA public key", "changes": {},
                                   "__id__": "pin"}}, 2)]
    ret = master("campus_trust", campus="east", test=True)
    assert ret["result"] is False and ret["retcode"] == 1 and master.retcode == 1
    assert minions.jobs[0]["kwarg"]["test"] is True
    assert ret["failed"] == ["kiosk-east-01"] and ret["silent"] == ["kiosk-east-02"]
    assert ret["kiosks"]["kiosk-east-01"]["reason"] == "pin: not an RSA public key"
    assert ret["error"] == "campus key not pinned on kiosk-east-01 (failed), kiosk-east-02 (silent)"
    assert master("campus_trust", campus="west")["error"].startswith("campus: west has no readable key pair")


# ---------------------------------------------------------------- autosign


def test_autosign_lists_the_inventory_pis_for_the_master(master):
    ret = master("autosign")
    assert ret["result"] is True and ret["changed"] is True and ret["dest"] == str(master.autosign_file)
    assert ret["ids"] == list(PIS) and "note" not in ret
    lines = [line for line in master.autosign_file.read_text().splitlines() if not line.startswith("#")]
    assert lines == list(PIS)  # the syndics only: no kiosk is accepted by the top master
    assert stat.S_IMODE(os.stat(master.autosign_file).st_mode) == 0o644
    assert master("autosign")["changed"] is False
    other = master.root / "other.conf"
    ret = master("autosign", dest=str(other))
    assert other.read_text() == master.autosign_file.read_text() and "autosign_file" in ret["note"]


def test_autosign_refuses_a_relative_or_unwritable_dest(master):
    ret = master("autosign", dest="autosign.conf")
    assert ret["result"] is False and master.retcode == 1 and ret["error"].startswith("dest: ")
    ret = master("autosign", dest=str(master.root / "no-such-dir" / "autosign.conf"))
    assert ret["result"] is False and ret["error"].startswith("dest: cannot write")


# ---------------------------------------------------------------- keys


def listing(master_fp, accepted, pending=None):
    """A Pi's kiosk_fleet.master_keys answer."""
    return {"pki_dir": "/etc/salt/pki/master", "master": master_fp, "accepted": accepted,
            "pending": pending or {}, "rejected": {}, "denied": {}}


def test_keys_reports_a_sound_campus(master, minions):
    master("campus_keygen", campus="east")
    campus_fp = fleet_keys.fingerprint(master.pair("east")[1])
    accepted = {"pi-east-1": "aa", "pi-east-2": "bb", "kiosk-east-01": "k1", "kiosk-east-02": "k2"}
    minions.answer = lambda fun, tgt, arg, kwarg: [(pi, listing(campus_fp, accepted), 0) for pi in tgt]
    ret = master("keys", campus="east")
    assert ret["result"] is True and ret["retcode"] == 0 and master.retcode == 0
    assert minions.jobs == [{"tgt": ["pi-east-1", "pi-east-2"], "fun": "kiosk_fleet.master_keys", "arg": [],
                             "kwarg": {}}]
    east = ret["campuses"]["east"]
    assert east["fingerprint"] == campus_fp and east["problems"] == []
    assert east["pis"] == {"pi-east-1": {"master": campus_fp, "matches": True},
                           "pi-east-2": {"master": campus_fp, "matches": True}}
    assert east["kiosks"]["everywhere"] == ["kiosk-east-01", "kiosk-east-02"]


def test_keys_names_every_problem_and_fails(master, minions):
    master("campus_keygen")
    east_fp = fleet_keys.fingerprint(master.pair("east")[1])
    west_fp = fleet_keys.fingerprint(master.pair("west")[1])
    answers = {
        "pi-east-1": [listing(east_fp, {"kiosk-east-01": "k1", "kiosk-east-02": "k2", "kiosk-west-01": "w1"})],
        "pi-east-2": [listing("00:11", {"kiosk-east-01": "other"}, pending={"kiosk-east-02": "k2"})],
        "pi-west-1": ["'kiosk_fleet.master_keys' is not available."],
        "pi-west-2": [],
    }
    minions.answer = lambda fun, tgt, arg, kwarg: [(pi, a, 0) for pi in tgt for a in answers[pi]]
    ret = master("keys")
    assert ret["result"] is False and ret["retcode"] == 1 and master.retcode == 1
    assert len(minions.jobs) == 2  # one job per campus
    east, west = ret["campuses"]["east"], ret["campuses"]["west"]
    assert east["pis"]["pi-east-1"]["matches"] is True and east["pis"]["pi-east-2"]["matches"] is False
    assert east["kiosks"]["missing"] == {"kiosk-east-02": ["pi-east-2"]}
    assert east["kiosks"]["differing"] == {"kiosk-east-01": {"pi-east-1": "k1", "pi-east-2": "other"}}
    assert east["kiosks"]["everywhere"] == []
    assert east["unexpected"] == {"pi-east-1": ["kiosk-west-01"]}
    assert west["fingerprint"] == west_fp and west["silent"] == ["pi-west-2"]
    assert west["failed"] == {"pi-west-1": "'kiosk_fleet.master_keys' is not available."}
    assert "kiosk-west-01" in ret["error"] and "pi-west-2: did not answer" in ret["error"]


def test_keys_without_a_campus_key_on_the_master_fails(master, minions):
    minions.answer = lambda fun, tgt, arg, kwarg: [(pi, listing("aa:bb", {}), 0) for pi in tgt]
    ret = master("keys", campus="west")
    assert ret["result"] is False and master.retcode == 1
    assert ret["campuses"]["west"]["fingerprint"] is None
    assert ret["campuses"]["west"]["problems"][0].startswith("west: no campus key on this master")
    assert master("keys", campus="north")["error"].startswith("campus: unknown campus north")
    assert master("keys", timeout="soon")["error"].startswith("timeout: ")
