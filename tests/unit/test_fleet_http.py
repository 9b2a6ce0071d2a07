"""The shared HTTP rules: nothing of a URL but its scheme, host and port is ever shown."""

import pytest
import requests

import fleet_http

SECRET = "SECRET123"


@pytest.mark.parametrize(
    "url, shown",
    [
        (f"https://platform.example.org/api/kiosk-schedules?token={SECRET}", "https://platform.example.org"),
        (f"http://user:{SECRET}@127.0.0.1:8080/hooks/{SECRET}", "http://127.0.0.1:8080"),
        (f"http://[::1]:9/{SECRET}", "http://[::1]:9"),
    ],
)
def test_host_of_drops_userinfo_path_and_query(url, shown):
    assert fleet_http.host_of(url) == shown
    assert SECRET not in fleet_http.host_of(url)


def test_host_of_survives_garbage():
    assert fleet_http.host_of(None) == "<invalid URL>"
    assert fleet_http.host_of("http://h:99999999/") == "<invalid URL>"


def test_describe_error_names_the_class_and_host_only():
    url = f"http://127.0.0.1:1/api/kiosk-schedules?token={SECRET}"
    try:
        fleet_http.session().get(url, timeout=2)
    except requests.RequestException as exc:
        assert SECRET in str(exc)  # requests' own text leaks it: the reason this module exists
        text = fleet_http.describe_error(exc, url)
    assert text == "ConnectionError contacting http://127.0.0.1:1"


@pytest.mark.parametrize("url", [None, "", 5, "ftp://h/x", "http:///nohost", "http://h:bad/", "http://h/a b",
                                 "http://h/\r\nX-Injected: 1"])
def test_check_url_refuses_without_echoing(url):
    with pytest.raises(ValueError) as info:
        fleet_http.check_url(url, "webhook_url")
    assert str(info.value).startswith("webhook_url: ")
    if isinstance(url, str) and url:
        assert url not in str(info.value)


def test_session_ignores_environment_and_redirects(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.9:3128")
    sess = fleet_http.session()
    assert sess.trust_env is False
    assert sess.max_redirects == 0


def test_urllib3_request_lines_never_reach_a_debug_log():
    import logging

    # the logger's own level: NOTSET (0) would inherit DEBUG from a master at log_level debug
    assert logging.getLogger("urllib3.connectionpool").level >= logging.INFO
