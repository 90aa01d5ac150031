"""proxy_url and proxy_from_environment: checks, defaults, the environment, NO_PROXY."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from exporter.config import Config, ConfigError, parse_config
from exporter.config.model import Proxy
from exporter.config.proxies import bypassed, hide_credentials

TOKEN = "tok-0123456789abcdef"
ENV = {"SHOPLAZZA_TOKEN": TOKEN}
SECRET = "s3cret-pr0xy-pass"


def parse(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> Config:
    return parse_config(
        textwrap.dedent(text), environ={**ENV, **(environ or {})}, base_dir=str(tmp_path)
    )


def errors(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path, environ)
    return info.value.errors


def config(store: str = "", defaults: str = "", base_url: str = "https://acme.example") -> str:
    text = f"defaults:\n{textwrap.indent(defaults, '  ')}\n" if defaults else ""
    text += "stores:\n  - name: acme\n"
    text += f"    base_url: {base_url}\n    access_token_env: SHOPLAZZA_TOKEN\n"
    return text + textwrap.indent(store, "    ")


def test_neither_is_used_by_default(tmp_path: Path) -> None:
    store = parse(config(), tmp_path, {"HTTPS_PROXY": "http://p:3128"}).stores[0]
    assert store.proxy == Proxy()


def test_proxy_url_keeps_credentials_apart(tmp_path: Path) -> None:
    text = config(f"proxy_url: http://us%40er:{SECRET}%3A@Proxy.Example:3128/\n")
    proxy = parse(text, tmp_path).stores[0].proxy
    assert proxy.url == "http://proxy.example:3128"
    assert proxy.auth == f"us@er:{SECRET}:"
    assert SECRET not in repr(parse(text, tmp_path))


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("https://proxy.example", "https://proxy.example:443"),
        ("http://proxy.example", "http://proxy.example:80"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_proxy_url_default_ports(tmp_path: Path, value: str, url: str) -> None:
    assert parse(config(f'proxy_url: "{value}"\n'), tmp_path).stores[0].proxy.url == url


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("socks5://proxy:1080", 'invalid proxy URL "socks5://proxy:1080": it is not an http://'),
        (f"ftp://u:{SECRET}@proxy:21", 'invalid proxy URL "ftp://***@proxy:21": it is not an'),
        (f"http://u:{SECRET}@:3128", 'invalid proxy URL "http://***@:3128": no host'),
        ("http://", 'invalid proxy URL "http://": it is not an http:// or https:// URL'),
        ("proxy.example:3128", 'invalid proxy URL "proxy.example:3128": it is not an http://'),
        ("http://proxy:99999", 'invalid proxy URL "http://proxy:99999": bad host or port'),
        ("http://proxy/path", "a path, query or fragment is not allowed"),
        ("http://pro xy", "spaces or control characters"),
    ],
)
def test_bad_proxy_urls_are_errors_without_credentials(
    tmp_path: Path, value: str, message: str
) -> None:
    found = errors(config(f'proxy_url: "{value}"\n'), tmp_path)
    assert len(found) == 1
    assert found[0].startswith("config.yaml: stores[0].proxy_url: ")
    assert message in found[0]
    assert SECRET not in found[0]


def test_a_proxy_url_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    assert errors(config("proxy_url: [x]\n"), tmp_path) == [
        "config.yaml: stores[0].proxy_url: expected an http(s) URL, got a list"
    ]
    assert errors(config("proxy_from_environment: yes please\n"), tmp_path) == [
        "config.yaml: stores[0].proxy_from_environment: "
        'expected true or false, got string "yes please"'
    ]


def test_both_keys_are_an_error(tmp_path: Path) -> None:
    both = "proxy_url: http://p:3128\nproxy_from_environment: true\n"
    assert errors(config(both), tmp_path) == [
        "config.yaml: stores[0]: set only one of proxy_url / proxy_from_environment, not both"
    ]
    assert errors(config(defaults=both), tmp_path) == [
        "config.yaml: defaults: set only one of proxy_url / proxy_from_environment, not both"
    ]


def test_defaults_apply_and_a_store_overrides_them(tmp_path: Path) -> None:
    env = {"HTTPS_PROXY": "http://env-proxy:8080"}
    assert parse(config(defaults="proxy_url: http://p:3128"), tmp_path).stores[0].proxy.url == (
        "http://p:3128"
    )
    inherited = parse(config(defaults="proxy_from_environment: true"), tmp_path, env)
    assert inherited.stores[0].proxy.url == "http://env-proxy:8080"
    for store in ('proxy_url: ""\n', "proxy_from_environment: false\n"):
        text = config(store, defaults="proxy_url: http://p:3128")
        assert parse(text, tmp_path).stores[0].proxy.url == ""
    text = config("proxy_from_environment: true\n", defaults="proxy_url: http://p:3128")
    assert parse(text, tmp_path, env).stores[0].proxy.url == "http://env-proxy:8080"


@pytest.mark.parametrize(
    ("base_url", "environ", "url"),
    [
        ("https://acme.example", {"HTTPS_PROXY": "http://a:1"}, "http://a:1"),
        (
            "https://acme.example",
            {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://a:1"},
            "http://low:1",
        ),
        ("https://acme.example", {"HTTP_PROXY": "http://a:1"}, ""),
        ("http://127.0.0.1:8080", {"HTTP_PROXY": "http://a:1"}, "http://a:1"),
        ("https://acme.example", {"HTTPS_PROXY": "a:3128"}, "http://a:3128"),
        ("https://acme.example", {"HTTPS_PROXY": "http://a:1", "NO_PROXY": "example"}, ""),
        ("https://acme.example", {"HTTPS_PROXY": "http://a:1", "no_proxy": ".acme.example"}, ""),
        (
            "https://acme.example",
            {"HTTPS_PROXY": "http://a:1", "NO_PROXY": "cme.example"},
            "http://a:1",
        ),
        ("https://acme.example", {"HTTPS_PROXY": "http://a:1", "NO_PROXY": "*"}, ""),
        ("https://acme.example", {"HTTPS_PROXY": "", "NO_PROXY": ""}, ""),
    ],
)
def test_proxy_from_environment_is_read_at_load(
    tmp_path: Path, base_url: str, environ: dict[str, str], url: str
) -> None:
    text = config("proxy_from_environment: true\n", base_url=base_url)
    proxy = parse(text, tmp_path, environ).stores[0].proxy
    assert proxy.url == url and proxy.from_environment


def test_a_bad_environment_proxy_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    env = {"HTTPS_PROXY": f"socks5://u:{SECRET}@p:1080"}
    found = errors(config("proxy_from_environment: true\n"), tmp_path, env)
    assert found == [
        "config.yaml: stores[0].proxy_from_environment: HTTPS_PROXY: invalid proxy URL "
        '"socks5://***@p:1080": it is not an http:// or https:// URL'
    ]
    found = errors(config(defaults="proxy_from_environment: true"), tmp_path, env)
    assert found[0].startswith("config.yaml: stores[0]: proxy_from_environment from defaults: ")


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("api.example.com", 443, "example.com", True),
        ("example.com", 443, ".example.com", True),
        ("badexample.com", 443, "example.com", False),
        ("api.example.com", 443, "example.com:8443", False),
        ("api.example.com", 8443, "example.com:8443", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.3", True),
        ("11.1.2.3", 443, "10.0.0.0/8,  other", False),
        ("::1", 443, "::1", True),
        ("::1", 443, "[::1]:443", True),
        ("anything", 1, " * ", True),
        ("anything", 1, "", False),
    ],
)
def test_no_proxy_entries(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1", "http://***@h:1"),
        ("http://u:p@x@h:1/a@b", "http://***@h:1/a@b"),
        ("http://h:1/a@b", "http://h:1/a@b"),
        ("u:p@h:1", "***@h:1"),
    ],
)
def test_hide_credentials(url: str, shown: str) -> None:
    assert hide_credentials(url) == shown
