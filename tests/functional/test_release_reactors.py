"""
The release reactors rendered by Salt's own renderers (jinja|yaml, as the
reactor does) with real and forged event data: they only ever hand names to
the runners that re-check them (kiosk_release.on_published and
kiosk_release.push), never call kiosk_release.stage or a module directly,
and render nothing for data that is not names.
"""

import json
import pathlib

import pytest
import salt.config
import salt.loader
import salt.template

REPO = pathlib.Path(__file__).resolve().parents[2]
PUBLISHED = str(REPO / "reactor" / "kiosk_release_published.sls")
STAGED = str(REPO / "reactor" / "kiosk_release_staged.sls")


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    root = tmp_path_factory.mktemp("reactor")
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(root), "cachedir": str(root / "cache"), "pki_dir": str(root / "pki"),
                 "sock_dir": str(root / "sock"), "file_roots": {"base": [str(root)]}})
    renderers = salt.loader.render(opts, {})

    def run(path, tag, data):
        out = salt.template.compile_template(path, renderers, opts["renderer"], opts["renderer_blacklist"],
                                             opts["renderer_whitelist"], tag=tag, data=data)
        return json.loads(json.dumps(out))  # OrderedDicts -> plain

    return run


def calls(rendered):
    """[(function, {arg: value})] of a rendered reactor."""
    found = []
    for body in rendered.values():
        for fun, params in body.items():
            args = {k: v for entry in params for a in entry.get("args", []) for k, v in a.items()}
            found.append((fun, args))
    return found


def test_published_hands_names_to_on_published_only(render):
    data = {"name": "kiosk-app", "version": "1.4.0", "campuses": ["east", "west"], "_stamp": "2026-12-02T02:00:00"}
    assert calls(render(PUBLISHED, "kiosk/release/published", data)) == [
        ("runner.kiosk_release.on_published", {"name": "kiosk-app", "version": "1.4.0", "campuses": ["east", "west"]})]


@pytest.mark.parametrize("data", [
    # the plain event.fire_master form: the payload sits under data, the reactor finds no name
    {"id": "kiosk-west-01", "tag": "kiosk/release/published", "cmd": "_minion_event",
     "data": {"name": "kiosk-app", "version": "1.4.0", "campuses": ["east"]}},
    {"name": "../etc", "version": "1.4.0", "campuses": ["east"]},
    {"name": "kiosk-app", "version": "1.4.0; id", "campuses": ["east"]},
    {"name": "kiosk-app", "version": "1.4.0", "campuses": "east"},
    {"name": "kiosk-app", "version": "1.4.0", "campuses": []},
    {"name": "kiosk-app", "version": "1.4.0", "campuses": ["c"] * 1001},
    {"name": {"x": 1}, "version": "1.4.0", "campuses": ["east"]},
])
def test_published_renders_nothing_for_data_that_is_not_names(render, data):
    assert render(PUBLISHED, "kiosk/release/published", data) == {}


def test_staged_hands_the_sender_id_to_push_which_checks_it(render):
    # the preload form puts any id there: push accepts only inventory Pis (tests/unit/test_fleet_rollout.py)
    data = {"id": "pi-east-1", "name": "kiosk-app", "version": "1.4.0"}
    assert calls(render(STAGED, "kiosk/release/staged", data)) == [
        ("runner.kiosk_release.push", {"name": "kiosk-app", "version": "1.4.0", "pi": "pi-east-1"})]
    plain = {"id": "kiosk-west-01", "data": {"name": "kiosk-app", "version": "1.4.0"}}
    assert calls(render(STAGED, "kiosk/release/staged", plain)) == [
        ("runner.kiosk_release.push", {"name": "kiosk-app", "version": "1.4.0", "pi": "kiosk-west-01"})]


@pytest.mark.parametrize("data", [
    {"id": "pi-east-1; id", "name": "kiosk-app", "version": "1.4.0"},
    {"id": ["pi-east-1"], "name": "kiosk-app", "version": "1.4.0"},
    {"id": "pi-east-1", "name": "kiosk-app", "version": "1.4.0\n"},
    {"id": "pi-east-1", "name": "kiosk app", "version": "1.4.0"},
])
def test_staged_renders_nothing_for_data_that_is_not_names(render, data):
    assert render(STAGED, "kiosk/release/staged", data) == {}


BOOT = str(REPO / "reactor" / "kiosk_boot.sls")


def test_boot_syncs_and_records_the_claimed_kiosk_only_when_its_id_is_a_name(render):
    rendered = render(BOOT, "kiosk/boot", {"id": "kiosk-east-01"})
    # the runner gets the id alone: it asks the kiosk for its boot time itself
    assert rendered == {
        "sync_pack_on_kiosk_boot": {"local.saltutil.sync_all": [{"tgt": "kiosk-east-01"}, {"tgt_type": "list"}]},
        "record_kiosk_boot": {"runner.kiosk_restarts.boot": [{"args": [{"kiosk": "kiosk-east-01"}]}]},
    }
    for bad in ("kiosk-east-01\n", "kiosk-east-01,pi-east-1", "*", ["kiosk-east-01"], ""):
        assert render(BOOT, "kiosk/boot", {"id": bad}) == {}
