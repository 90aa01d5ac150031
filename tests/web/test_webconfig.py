"""Tests for exporter.web.webconfig: loading, validation, rotation and basic-auth checks."""

from __future__ import annotations

import base64
import logging
import os
import ssl
from pathlib import Path

import bcrypt
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.web.auth import BasicAuthVerifier, parse_basic_auth
from exporter.web.webconfig import (
    RateLimit,
    WebConfig,
    WebConfigError,
    WebConfigWatcher,
    load_web_config,
)

PASSWORD = b"s3cret"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)).decode()
OTHER_HASH = bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=4)).decode()


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace a file the way editors and Kubernetes do: write a new one, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, str):
        tmp.write_text(text)
    else:
        tmp.write_bytes(text)
    os.replace(tmp, path)


def basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    write_atomic(path, text)
    return str(path)


# -- loading ---------------------------------------------------------------------------


def test_full_config_loads(tls_dir: Path) -> None:
    path = write_config(
        tls_dir,
        f"""
tls_server_config:
  cert_file: cert.pem
  key_file: {tls_dir / "key.pem"}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  client_allowed_sans: [prometheus.example]
  min_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Content-Security-Policy: ""
basic_auth_users:
  alice: {HASH}
  1234: '{OTHER_HASH}'
""",
    )
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == str(tls_dir / "cert.pem")  # relative to the config file
    assert config.tls.key_file == str(tls_dir / "key.pem")
    assert config.tls.client_ca_file == str(tls_dir / "ca.pem")
    assert config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert config.tls.client_allowed_sans == ("prometheus.example",)
    assert config.tls.min_version == "TLS13"
    assert config.tls.max_version == "TLS13"
    assert dict(config.basic_auth_users) == {"alice": HASH, "1234": OTHER_HASH}
    assert dict(config.headers) == {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}


@pytest.mark.parametrize("text", ["", "# nothing\n", "tls_server_config: {}\n", "{}\n"])
def test_empty_config_means_plain_http_without_auth(tmp_path: Path, text: str) -> None:
    assert load_web_config(write_config(tmp_path, text)) == WebConfig()


@pytest.mark.parametrize("prefix", ["$2y$", "$2b$", "$2a$"])
def test_htpasswd_hash_prefixes_are_accepted(tmp_path: Path, prefix: str) -> None:
    hashed = prefix + HASH[4:]
    config = load_web_config(write_config(tmp_path, f"basic_auth_users:\n  u: '{hashed}'\n"))
    assert BasicAuthVerifier().verify(config.basic_auth_users, basic("u", PASSWORD)) == "u"


TLS = "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"

BAD_CONFIGS = [
    ("tls_server_config: [\n", "web.yml: invalid YAML: "),
    ("basic_auth_users: {a: x, a: y}\n", "web.yml: invalid YAML: "),
    ("tls_server_config: 3\n", "web.yml: tls_server_config: must be a mapping, got a number"),
    ("bogus: 1\n", "web.yml: bogus: unknown key (allowed: tls_server_config,"),
    (TLS + "  foo: bar\n", "web.yml: tls_server_config.foo: unknown key"),
    (
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: key.pem\n",
        "web.yml: tls_server_config.cert_file: cannot read ",
    ),
    (
        "tls_server_config:\n  cert_file: web.yml\n  key_file: key.pem\n",
        "tls_server_config.cert_file: ",
    ),
    ("tls_server_config:\n  key_file: key.pem\n", "tls_server_config.cert_file: required"),
    (
        "basic_auth_users:\n  alice: notahash\n",
        "web.yml: basic_auth_users.alice: not a bcrypt hash",
    ),
    ("basic_auth_users:\n  alice: 12\n", "basic_auth_users.alice: must be a bcrypt hash string"),
    ("basic_auth_users: [alice]\n", "basic_auth_users: must be a mapping"),
    (
        "basic_auth_users:\n  'a:b': " + HASH + "\n",
        "basic_auth_users.a:b: user name must be a non-empty string without ':'",
    ),
    (
        TLS + "  client_auth_type: RequestClientCert\n  client_ca_file: ca.pem\n",
        "tls_server_config.client_auth_type: RequestClientCert is not supported",
    ),
    (
        TLS + "  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.pem\n",
        "tls_server_config.client_auth_type: RequireAnyClientCert is not supported",
    ),
    (TLS + "  client_auth_type: Sometimes\n", "client_auth_type: unknown value 'Sometimes'"),
    (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        "tls_server_config.client_ca_file: required with client_auth_type RequireAndVerify",
    ),
    (TLS + "  client_ca_file: ca.pem\n", "client_ca_file is set but client_auth_type is NoC"),
    (
        TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.pem\n"
        "  client_allowed_sans: [x]\n",
        "client_allowed_sans: requires client_auth_type RequireAndVerifyClientCert",
    ),
    (TLS + "  min_version: TLS14\n", "tls_server_config.min_version: must be one of TLS10,"),
    (
        TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        "min_version: TLS13 is above max_version TLS12",
    ),
    (TLS + "  cipher_suites: [RC4]\n", "cipher_suites[0]: unknown or insecure cipher suite"),
    (TLS + "  curve_preferences: [X25519]\n", "curve_preferences: not supported"),
    (TLS + "  cert: inline\n", "tls_server_config.cert: inline PEM is not supported"),
    (TLS + "  prefer_server_cipher_suites: yes please\n", "must be a boolean, got a string"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "headers.X-Powered-By: unknown"),
    (
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        "headers.X-Frame-Options: must be one of deny, sameorigin",
    ),
    ("rate_limit: {interval: 1s}\n", "web.yml: rate_limit.burst: must be >= 1 when interval"),
    ("rate_limit: {interval: 1s, burst: 0}\n", "web.yml: rate_limit.burst: must be >= 1"),
    ("rate_limit: {interval: soon, burst: 5}\n", "web.yml: rate_limit.interval: invalid duration"),
    ("rate_limit: {interval: 1s, burst: 5, rate: 3}\n", "web.yml: rate_limit.rate: unknown key"),
    ("rate_limit: 5\n", "web.yml: rate_limit: must be a mapping"),
    ("auth_excluded_paths: /-/healthy\n", "web.yml: auth_excluded_paths: must be a list"),
    ("auth_excluded_paths: [healthy]\n", "web.yml: auth_excluded_paths[0]: 'healthy' must be"),
]


def test_rate_limit_and_auth_excluded_paths_load(tmp_path: Path) -> None:
    config = load_web_config(
        write_config(
            tmp_path,
            f"basic_auth_users: {{prometheus: '{HASH}'}}\n"
            "auth_excluded_paths: [/-/healthy, /sub/-/ready]\n"
            "rate_limit: {interval: 100ms, burst: 20}\n",
        )
    )
    assert config.rate_limit == RateLimit(interval=0.1, burst=20)
    assert config.auth_excluded_paths == {"/-/healthy", "/sub/-/ready"}
    assert not config.needs_auth("/-/healthy")
    assert config.needs_auth("/-/healthy/")  # exact paths only
    assert config.needs_auth("/metrics")


@pytest.mark.parametrize("text", ["rate_limit: {interval: 0s, burst: 5}\n", "rate_limit: {}\n"])
def test_rate_limit_interval_zero_turns_it_off(tmp_path: Path, text: str) -> None:
    assert load_web_config(write_config(tmp_path, text)).rate_limit is None


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_invalid_config_is_a_clear_error(tls_dir: Path, text: str, expected: str) -> None:
    path = write_config(tls_dir, text)
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    message = str(info.value)
    assert expected.replace("web.yml", path) in message
    assert all(line.startswith(path + ": ") for line in info.value.errors)
    assert "Traceback" not in message


def test_web_config_shares_the_configuration_kit(tls_dir: Path) -> None:
    path = write_config(
        tls_dir,
        "tls_server_confg: {}\n"
        "http_server_config: {headers: {X-Frame-Option: deny}, http2: 1}\n"
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: key.pem\n"
        "  client_allowed_sans: [a, 3]\n  max_version: 13\n",
    )
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    assert [line.removeprefix(path + ": ") for line in info.value.errors] == [
        "tls_server_confg: unknown key (did you mean tls_server_config?)",
        f'tls_server_config.cert_file: cannot read "{tls_dir}/missing.pem": '
        "No such file or directory",
        "tls_server_config.client_allowed_sans[1]: must be a string, got a number",
        "tls_server_config.client_allowed_sans: requires client_auth_type "
        "RequireAndVerifyClientCert",
        "tls_server_config.max_version: must be a string, got a number",
        "http_server_config.http2: must be a boolean, got a number",
        "http_server_config.headers.X-Frame-Option: unknown key (did you mean X-Frame-Options?)",
    ]


def test_all_errors_are_reported_at_once(tls_dir: Path) -> None:
    path = write_config(
        tls_dir,
        "tls_server_config:\n  cert_file: nope.pem\n  key_file: key.pem\n"
        "  client_auth_type: RequireAnyClientCert\n"
        "basic_auth_users:\n  alice: nohash\nextra: 1\n",
    )
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    keys = [line.split(": ")[1] for line in info.value.errors]
    assert keys == [
        "extra",
        "tls_server_config.cert_file",
        "tls_server_config.client_auth_type",
        "basic_auth_users.alice",
    ]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yml")
    with pytest.raises(WebConfigError, match=r"absent\.yml: cannot read web config file"):
        load_web_config(path)


def test_key_not_matching_cert_is_rejected(tls_dir: Path, ca: trustme.CA) -> None:
    ca.issue_cert("other").private_key_pem.write_to_path(str(tls_dir / "other-key.pem"))
    path = write_config(
        tls_dir, "tls_server_config:\n  cert_file: cert.pem\n  key_file: other-key.pem\n"
    )
    with pytest.raises(WebConfigError, match=r"tls_server_config\.key_file: .* does not match"):
        load_web_config(path)


def test_hash_value_is_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path, "basic_auth_users:\n  alice: $2b$10$short-and-secretish\n")
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    assert "secretish" not in str(info.value)


# -- rotation --------------------------------------------------------------------------


def test_watcher_rejects_invalid_initial_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="unknown key"):
        WebConfigWatcher(write_config(tmp_path, "nope: 1\n"))


def test_watcher_rotates_users_and_keeps_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    path = write_config(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n")
    watcher = WebConfigWatcher(path, clock=clock)
    assert list(watcher.current().basic_auth_users) == ["alice"]

    write_config(tmp_path, f"basic_auth_users:\n  bob: {HASH}\n")
    clock.now += 0.5  # not yet due: at most one check per second
    assert list(watcher.current().basic_auth_users) == ["alice"]
    clock.now += 0.6
    assert list(watcher.current().basic_auth_users) == ["bob"]

    caplog.set_level(logging.INFO, logger="exporter.web.webconfig")
    write_config(tmp_path, "basic_auth_users: [broken\n")
    clock.now += 1.1
    assert list(watcher.current().basic_auth_users) == ["bob"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "exporter.web.webconfig"
    assert "keeping the last good one" in errors[0].getMessage()
    fields = vars(errors[0])  # structured fields, as every other log line
    assert fields["file"] == path
    assert "invalid YAML" in fields["err"]
    clock.now += 1.1  # unchanged bad file: not re-read, not logged again
    assert list(watcher.current().basic_auth_users) == ["bob"]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    write_config(tmp_path, f"basic_auth_users:\n  carol: {HASH}\n")
    clock.now += 1.1
    assert list(watcher.current().basic_auth_users) == ["carol"]


def test_watcher_rebuilds_ssl_context_when_cert_changes(tls_dir: Path, ca: trustme.CA) -> None:
    clock = FakeClock()
    watcher = WebConfigWatcher(write_config(tls_dir, TLS), clock=clock)
    first = watcher.ssl_context()
    assert isinstance(first, ssl.SSLContext)
    clock.now += 5
    assert watcher.ssl_context() is first  # nothing changed: cached

    leaf = ca.issue_cert("rotated.example")
    write_atomic(tls_dir / "cert.pem", leaf.cert_chain_pems[0].bytes())
    clock.now += 5
    assert watcher.ssl_context() is first  # key does not match the new cert yet: kept
    write_atomic(tls_dir / "key.pem", leaf.private_key_pem.bytes())
    clock.now += 5
    second = watcher.ssl_context()
    assert second is not None and second is not first
    assert watcher.generation == 2


def test_watcher_reloads_when_missing_cert_appears(tls_dir: Path) -> None:
    clock = FakeClock()
    watcher = WebConfigWatcher(write_config(tls_dir, ""), clock=clock)
    (tls_dir / "cert.pem").rename(tls_dir / "cert.bak")
    write_config(tls_dir, TLS)
    clock.now += 2
    assert watcher.current().tls is None  # cert missing: invalid, last good kept
    (tls_dir / "cert.bak").rename(tls_dir / "cert.pem")
    clock.now += 2
    assert watcher.current().tls is not None


def test_watcher_check_forces_a_look(tmp_path: Path) -> None:
    watcher = WebConfigWatcher(write_config(tmp_path, ""), clock=FakeClock())
    write_config(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n")
    assert watcher.check() is True
    assert watcher.check() is False
    assert "alice" in watcher.current().basic_auth_users


# -- basic auth ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"nocolon").decode(), None),
        ("Basic " + base64.b64encode(b"\xff:pw").decode(), None),
        ("Basic " + base64.b64encode(b"u:p:w").decode(), ("u", b"p:w")),
        ("basic   " + base64.b64encode(b"u:").decode(), ("u", b"")),
        (
            "Basic " + base64.b64encode("j\u00f6rg:\u00e9".encode()).decode(),
            ("j\u00f6rg", b"\xc3\xa9"),
        ),
    ],
)
def test_parse_basic_auth(header: str | None, expected: tuple[str, bytes] | None) -> None:
    assert parse_basic_auth(header) == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: "Basic " + base64.b64encode(b).decode())))
def test_parse_basic_auth_never_raises(header: str) -> None:
    result = parse_basic_auth(header)
    assert result is None or (isinstance(result[0], str) and isinstance(result[1], bytes))
    users = {"alice": HASH}
    assert BasicAuthVerifier().verify(users, header) in (None, "alice")


class CountingCheckpw:
    def __init__(self) -> None:
        self.calls = 0
        self.real = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        return self.real(password, hashed)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingCheckpw:
    counter = CountingCheckpw()
    monkeypatch.setattr(bcrypt, "checkpw", counter)
    return counter


def test_verify_right_wrong_unknown_and_long(counting: CountingCheckpw) -> None:
    users = {"alice": HASH, "bob": OTHER_HASH}
    verifier = BasicAuthVerifier()
    assert verifier.verify(users, basic("alice", PASSWORD)) == "alice"
    assert verifier.verify(users, basic("bob", b"other")) == "bob"
    assert verifier.verify(users, basic("alice", b"wrong")) is None
    assert verifier.verify(users, basic("alice", b"other")) is None  # bob's password
    assert verifier.verify(users, basic("mallory", PASSWORD)) is None
    assert verifier.verify(users, basic("alice", b"x" * 73)) is None  # bcrypt 5 raises
    assert verifier.verify(users, basic("alice", PASSWORD + b"\x00")) is None
    assert verifier.verify(users, None) is None


def test_unknown_user_still_pays_bcrypt(counting: CountingCheckpw) -> None:
    assert BasicAuthVerifier().verify({"alice": HASH}, basic("mallory", PASSWORD)) is None
    assert counting.calls == 1


def test_outcomes_are_cached(counting: CountingCheckpw) -> None:
    users = {"alice": HASH}
    verifier = BasicAuthVerifier()
    for _ in range(5):
        assert verifier.verify(users, basic("alice", PASSWORD)) == "alice"
    assert counting.calls == 1
    for _ in range(3):
        assert verifier.verify(users, basic("alice", b"wrong")) is None
    assert counting.calls == 2
    assert verifier.verify(users, basic("alice", b"wrong again")) is None
    assert counting.calls == 3
    # A rotated hash for the same user misses the cache (the hash is part of the key).
    new_hash = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)).decode()
    assert verifier.verify({"alice": new_hash}, basic("alice", PASSWORD)) == "alice"
    assert counting.calls == 4
    assert verifier.verify({"alice": OTHER_HASH}, basic("alice", PASSWORD)) is None


def test_cache_is_bounded(counting: CountingCheckpw) -> None:
    users = {"alice": HASH, "bob": OTHER_HASH}
    verifier = BasicAuthVerifier(cache_size=1)
    verifier.verify(users, basic("alice", PASSWORD))
    verifier.verify(users, basic("bob", b"other"))
    verifier.verify(users, basic("alice", PASSWORD))
    assert counting.calls == 3
