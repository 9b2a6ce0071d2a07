import base64
import copy
import os
import stat

import pytest
import salt.crypt
import salt.utils.crypt
import salt.utils.stringutils

import fleet_inventory
import fleet_keys
from tests.support.topology import two_campus_inventory


@pytest.fixture(scope="module")
def campus_pair():
    return fleet_keys.new_master_key_pair()


@pytest.fixture(scope="module")
def pi_pair():
    return fleet_keys.new_master_key_pair()


@pytest.fixture
def raw():
    return copy.deepcopy(two_campus_inventory(wol_port=40009)["kiosk_fleet"])


@pytest.fixture
def inv(raw):
    return fleet_inventory.validate(raw)


def test_key_pair_is_in_salts_own_format(campus_pair, tmp_path):
    private, public = campus_pair
    assert private.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    # the same files Salt writes for a master, and Salt reads them as a pair
    salt.crypt.gen_keys(str(tmp_path), "salt", 2048)
    salts = (tmp_path / "salt.pem").read_bytes()
    assert salts.splitlines()[0] == private.splitlines()[0]
    assert (tmp_path / "salt.pub").read_bytes().splitlines()[0] == public.splitlines()[0]
    (tmp_path / "campus.pem").write_bytes(private)
    (tmp_path / "campus.pub").write_bytes(public)
    sealed = salt.crypt.PublicKey(str(tmp_path / "campus.pub")).encrypt(b"aes key")
    assert salt.crypt.PrivateKey(str(tmp_path / "campus.pem")).decrypt(sealed) == b"aes key"
    assert not fleet_keys.same_public_key((tmp_path / "salt.pub").read_bytes(), public)


def test_fingerprint_is_what_salt_key_prints(campus_pair):
    _, public = campus_pair
    assert fleet_keys.fingerprint(public) == salt.utils.crypt.pem_finger(key=public, sum_type="sha256")
    assert fleet_keys.fingerprint(public.decode().replace("\n", "\r\n")) == fleet_keys.fingerprint(public)


@pytest.mark.parametrize("bad", [1024, 2047, "2048", True, None, 2049])
def test_bad_key_size_names_bits(bad):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.new_master_key_pair(bad)
    assert info.value.field == "bits"


def test_seal_opens_only_with_the_right_private_key(campus_pair, pi_pair):
    secret = campus_pair[0]
    envelope = fleet_keys.seal(secret, pi_pair[1])
    assert "PRIVATE" not in envelope and secret.decode() not in envelope
    assert fleet_keys.unseal(envelope, pi_pair[0]) == secret
    # the campus key itself (or any other) cannot open it
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.unseal(envelope, campus_pair[0])
    assert info.value.field == "sealed"


def test_two_seals_of_one_secret_differ(pi_pair):
    assert fleet_keys.seal(b"x", pi_pair[1]) != fleet_keys.seal(b"x", pi_pair[1])


def _flip(envelope, part, at):
    parts = envelope.split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[part]))
    raw[at] ^= 0x01
    parts[part] = base64.urlsafe_b64encode(bytes(raw)).decode()
    return ".".join(parts)


@pytest.mark.parametrize("part,at", [(1, 0), (1, -1), (2, 0), (3, 0), (3, -1)])
def test_any_changed_byte_fails_closed(pi_pair, part, at):
    envelope = fleet_keys.seal(b"campus private key", pi_pair[1])
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.unseal(_flip(envelope, part, at), pi_pair[0])
    assert info.value.field == "sealed"


@pytest.mark.parametrize("mangle", [
    lambda e: e[:-8],
    lambda e: e.replace("kfseal1", "kfseal2", 1),
    lambda e: ".".join(e.split(".")[:3]),
    lambda e: e + ".AAAA",
    lambda e: e.replace(".", "!", 1),
    lambda e: "",
    lambda e: 42,
    lambda e: e.encode(),
])
def test_malformed_envelopes_fail_closed(pi_pair, mangle):
    envelope = fleet_keys.seal(b"secret", pi_pair[1])
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.unseal(mangle(envelope), pi_pair[0])
    assert info.value.field == "sealed"


def test_seal_refuses_private_key_as_recipient_without_echoing_it(pi_pair):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.seal(b"x", pi_pair[0])
    assert info.value.field == "recipient_public_pem"
    assert "MII" not in str(info.value)


@pytest.mark.parametrize("secret", ["text", b"", None])
def test_seal_wants_bytes(pi_pair, secret):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.seal(secret, pi_pair[1])
    assert info.value.field == "secret"


def test_unseal_bad_private_key_names_it(pi_pair):
    envelope = fleet_keys.seal(b"x", pi_pair[1])
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.unseal(envelope, b"-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n")
    assert info.value.field == "private_pem"


def test_write_master_key_pair(campus_pair, pi_pair, tmp_path):
    pki = tmp_path / "pki" / "master"
    assert fleet_keys.write_master_key_pair(str(pki), *campus_pair) is True
    assert (pki / "master.pem").read_bytes() == campus_pair[0]
    assert (pki / "master.pub").read_bytes() == campus_pair[1]
    assert stat.S_IMODE(os.stat(pki / "master.pem").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(pki / "master.pub").st_mode) == 0o644
    assert not (pki / "master.pem.previous").exists()
    # same pair again: nothing written
    before = os.stat(pki / "master.pem").st_mtime_ns
    assert fleet_keys.write_master_key_pair(str(pki), *campus_pair) is False
    assert os.stat(pki / "master.pem").st_mtime_ns == before
    # a new pair: the old one is kept as .previous
    assert fleet_keys.write_master_key_pair(str(pki), pi_pair[0], pi_pair[1].decode()) is True
    assert (pki / "master.pem").read_bytes() == pi_pair[0]
    assert (pki / "master.pem.previous").read_bytes() == campus_pair[0]
    assert (pki / "master.pub.previous").read_bytes() == campus_pair[1]
    assert stat.S_IMODE(os.stat(pki / "master.pem.previous").st_mode) == 0o400
    assert not [p for p in os.listdir(pki) if p.endswith(".tmp")]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root changes owners")
def test_written_keys_take_the_owner_of_the_pki_dir(campus_pair, pi_pair, tmp_path):
    pki = tmp_path / "master"
    pki.mkdir()
    os.chown(pki, 4242, 4343)
    fleet_keys.write_master_key_pair(str(pki), *campus_pair)
    fleet_keys.write_master_key_pair(str(pki), *pi_pair)
    for name in ("master.pem", "master.pub", "master.pem.previous", "master.pub.previous"):
        assert (os.stat(pki / name).st_uid, os.stat(pki / name).st_gid) == (4242, 4343), name


def test_write_refuses_a_mismatched_pair_and_writes_nothing(campus_pair, pi_pair, tmp_path):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.write_master_key_pair(str(tmp_path), campus_pair[0], pi_pair[1])
    assert info.value.field == "public_pem"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("pki_dir", ["relative/dir", "", None, "/tmp/a\0b"])
def test_write_needs_an_absolute_pki_dir(campus_pair, pki_dir):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.write_master_key_pair(pki_dir, *campus_pair)
    assert info.value.field == "pki_dir"


def test_autosign_ids_are_the_campus_only(inv):
    east = fleet_keys.autosign_ids(inv, "east")
    assert east == ["kiosk-east-01", "kiosk-east-02", "pi-east-1", "pi-east-2"]
    west = set(fleet_keys.autosign_ids(inv, "west"))
    assert not west & set(east)
    assert all(i.startswith(("kiosk-west", "pi-west")) for i in west)


@pytest.mark.parametrize("campus", ["north", None, ["east"]])
def test_autosign_ids_unknown_campus_names_it(inv, campus):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.autosign_ids(inv, campus)
    assert info.value.field == "campus"


def test_autosign_text_accepts_exactly_the_ids_as_salt_matches_them(raw):
    raw["campuses"]["east"]["kiosks"]["kiosk.east.3"] = {"mac": "52:54:00:e1:00:03", "ip": "127.0.1.13", "vlan": "hall"}
    inv = fleet_inventory.validate(raw)
    ids = fleet_keys.autosign_ids(inv, "east")
    text = fleet_keys.autosign_text(ids)
    # what salt/daemons/masterapi.py check_signing_file does with the file
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]

    def accepted(minion_id):
        return any(salt.utils.stringutils.expr_match(minion_id, line) for line in lines)

    assert all(accepted(i) for i in ids)
    for other in ["kiosk-west-01", "pi-west-1", "kioskXeastX3", "kiosk-east-011", "pi-east-", "kiosk-east-0", "x"]:
        assert not accepted(other), other


@pytest.mark.parametrize("ids,field", [("kiosk-1", "ids"), (["ok", "*"], "ids[1]"), (["a b"], "ids[0]"),
                                      ([None], "ids[0]")])
def test_autosign_text_refuses_non_ids(ids, field):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.autosign_text(ids)
    assert info.value.field == field


def test_kiosk_masters_are_every_campus_pi_on_the_kiosks_vlan(inv):
    assert fleet_keys.kiosk_masters(inv, "kiosk-east-01") == ["127.0.1.2:4506", "127.0.1.3:4506"]
    assert fleet_keys.kiosk_masters(inv, "kiosk-east-02") == ["127.0.2.2:4506", "127.0.2.3:4506"]


def test_kiosk_masters_honour_pi_master_and_campus_port(raw):
    raw["campuses"]["east"]["master_port"] = 14506
    raw["campuses"]["east"]["pis"]["pi-east-2"]["master"] = "pi-east-2.lan"
    raw["campuses"]["east"]["pis"]["pi-east-1"]["master"] = "127.0.9.9:5000"
    inv = fleet_inventory.validate(raw)
    assert fleet_keys.kiosk_masters(inv, "kiosk-east-01") == ["127.0.9.9:5000", "pi-east-2.lan:14506"]
    assert fleet_keys.kiosk_masters(inv, "kiosk-west-01") == ["127.0.3.2:4506", "127.0.3.3:4506"]


def test_kiosk_masters_pi_without_address_names_its_master_field(raw):
    del raw["campuses"]["east"]["pis"]["pi-east-2"]["vlans"]["stairs"]
    inv = fleet_inventory.validate(raw)
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.kiosk_masters(inv, "kiosk-east-02")
    assert info.value.field == "campuses.east.pis.pi-east-2.master"


@pytest.mark.parametrize("kiosk", ["pi-east-1", "kiosk-nowhere", None, 3])
def test_kiosk_masters_unknown_kiosk_names_kiosk_id(inv, kiosk):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.kiosk_masters(inv, kiosk)
    assert info.value.field == "kiosk_id"


def test_kiosk_masters_needs_an_inventory():
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.kiosk_masters({"kiosk_fleet": {}}, "k")
    assert info.value.field == "inventory"


def test_kiosk_minion_config_is_hot_multi_master(inv):
    config = fleet_keys.kiosk_minion_config(inv, "kiosk-west-01")
    assert config["master"] == ["127.0.3.2:4506", "127.0.3.3:4506"]
    assert config["master_type"] == "str"
    # never 0: Salt re-adds status.master after each reconnect every master_alive_interval s (0: every loop)
    assert config["master_alive_interval"] == 3600
    assert config["random_master"] is False
    assert config["tcp_keepalive"] is True
    assert "auto_accept" not in config


def test_kiosk_minion_config_publish_port_is_the_campus_one(raw):
    # status.master looks for a connection to this port: Salt's 4506 sentinel made every live Pi look gone
    assert fleet_keys.kiosk_minion_config(fleet_inventory.validate(raw), "kiosk-west-01")["publish_port"] == 4505
    raw["campuses"]["west"]["publish_port"] = 14505
    config = fleet_keys.kiosk_minion_config(fleet_inventory.validate(raw), "kiosk-west-01")
    assert config["publish_port"] == 14505
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.kiosk_minion_config(fleet_inventory.validate(raw), "kiosk-west-01", publish_port=4506)
    assert info.value.field == "publish_port"


def test_campus_publish_port_is_validated(raw):
    raw["campuses"]["west"]["publish_port"] = 70000
    with pytest.raises(fleet_inventory.InventoryError) as info:
        fleet_inventory.validate(raw)
    assert "campuses.west.publish_port" in str(info.value)


def test_kiosk_minion_config_overrides_keep_their_type(inv):
    config = fleet_keys.kiosk_minion_config(inv, "kiosk-west-01", acceptance_wait_time=1, auth_timeout=2)
    assert config["acceptance_wait_time"] == 1 and config["auth_timeout"] == 2
    for bad, field in [({"master": ["x"]}, "master"), ({"master_type": "failover"}, "master_type"),
                       ({"tcp_keepalive": 1}, "tcp_keepalive"), ({"auth_tries": True}, "auth_tries"),
                       ({"recon_max": "1"}, "recon_max")]:
        with pytest.raises(fleet_keys.CampusKeyError) as info:
            fleet_keys.kiosk_minion_config(inv, "kiosk-west-01", **bad)
        assert info.value.field == field


def test_kiosk_minion_config_is_a_valid_salt_minion_config(inv, tmp_path):
    import salt.config
    import yaml

    path = tmp_path / "minion"
    path.write_text(yaml.safe_dump({"id": "kiosk-west-01", "root_dir": str(tmp_path), **fleet_keys.kiosk_minion_config(inv, "kiosk-west-01")}))
    opts = salt.config.minion_config(str(path), cache_minion_id=False)
    assert opts["master"] == ["127.0.3.2:4506", "127.0.3.3:4506"]
    assert opts["tcp_keepalive_idle"] == 60


def test_seal_takes_a_pkcs1_public_key_as_salt_may_store_it(pi_pair):
    from cryptography.hazmat.primitives import serialization

    pkcs1 = serialization.load_pem_public_key(pi_pair[1]).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert fleet_keys.unseal(fleet_keys.seal(b"k", pkcs1.decode()), pi_pair[0]) == b"k"


def test_top_autosign_ids_are_the_pis_only(inv):
    assert fleet_keys.top_autosign_ids(inv) == ["pi-east-1", "pi-east-2", "pi-west-1", "pi-west-2"]
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.top_autosign_ids([])
    assert info.value.field == "inventory"


def _listing(fp, accepted):
    return {"master": fp, "accepted": dict(accepted), "pending": {}, "rejected": {}, "denied": {}}


def test_keys_report_all_good(inv):
    ok = {"kiosk-east-01": "aa", "kiosk-east-02": "bb", "pi-east-1": "cc"}
    report = fleet_keys.keys_report(inv, "east", "fp", {"pi-east-1": _listing("fp", ok), "pi-east-2": _listing("fp", ok)})
    assert report["result"] is True, report["problems"]
    assert report["failed"] == {} and report["silent"] == []
    assert report["kiosks"]["everywhere"] == ["kiosk-east-01", "kiosk-east-02"]
    assert report["pis"] == {"pi-east-1": {"master": "fp", "matches": True}, "pi-east-2": {"master": "fp", "matches": True}}


def test_keys_report_finds_every_problem(inv):
    answers = {
        "pi-east-1": _listing("fp", {"kiosk-east-01": "aa", "kiosk-west-01": "ww"}),
        "pi-east-2": _listing("other", {"kiosk-east-01": "zz", "kiosk-east-02": "bb"}),
        "pi-west-1": _listing("fp", {}),
    }
    report = fleet_keys.keys_report(inv, "east", "fp", answers)
    assert report["result"] is False
    assert report["pis"]["pi-east-2"]["matches"] is False
    assert report["unexpected"] == {"pi-east-1": ["kiosk-west-01"]}
    assert report["kiosks"]["missing"] == {"kiosk-east-02": ["pi-east-1"]}
    assert report["kiosks"]["differing"] == {"kiosk-east-01": {"pi-east-1": "aa", "pi-east-2": "zz"}}
    assert report["kiosks"]["everywhere"] == []
    text = "\n".join(report["problems"])
    assert "pi-west-1: not a Pi of campus east" in text and "pi-east-2: master key other" in text


def test_keys_report_silent_and_malformed_pis(inv):
    report = fleet_keys.keys_report(inv, "east", "fp", {"pi-east-1": "Minion did not return"}, silent=["pi-east-2"])
    assert report["silent"] == ["pi-east-2"]
    assert report["result"] is False
    assert any(p.startswith("pi-east-1: answered str") for p in report["problems"])
    report = fleet_keys.keys_report(inv, "east", "fp", {"pi-east-1": {"master": "fp", "accepted": ["k"]}})
    assert any(p.startswith("pi-east-1: accepted is not") for p in report["problems"])
    assert report["silent"] == ["pi-east-2"]


def test_keys_report_failed_pis_are_not_silent(inv):
    ok = {"kiosk-east-01": "aa", "kiosk-east-02": "bb"}
    report = fleet_keys.keys_report(inv, "east", "fp", {"pi-east-1": _listing("fp", ok)},
                                    failed={"pi-east-2": "'kiosk_fleet.master_keys' is not available"})
    assert report["failed"] == {"pi-east-2": "'kiosk_fleet.master_keys' is not available"}
    assert report["silent"] == [] and report["result"] is False
    assert "pi-east-2: 'kiosk_fleet.master_keys' is not available" in report["problems"]
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.keys_report(inv, "east", "fp", {}, failed=["pi-east-2"])
    assert info.value.field == "failed"


@pytest.mark.parametrize("args,field", [(("east", 5, {}), "campus_fingerprint"), (("east", "fp", []), "answers"),
                                        (("east", "fp", {}, "pi-east-1"), "silent"), (("nowhere", "fp", {}), "campus")])
def test_keys_report_bad_input_names_the_field(inv, args, field):
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.keys_report(inv, *args)
    assert info.value.field == field


@pytest.mark.parametrize("second", ["127.0.1.2:14506", "127.0.1.2"])
def test_kiosk_masters_refuse_two_pis_on_one_host(raw, second):
    # Salt routes a multi-master minion's returns by master host alone: ports do not tell Pis apart
    raw["campuses"]["east"]["pis"]["pi-east-2"]["master"] = second
    inv = fleet_inventory.validate(raw)
    with pytest.raises(fleet_keys.CampusKeyError) as info:
        fleet_keys.kiosk_masters(inv, "kiosk-east-01")
    assert info.value.field == "campuses.east.pis.pi-east-2.master"
    assert "pi-east-1" in str(info.value)
