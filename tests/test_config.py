"""Configuration files, overrides and the twistd options."""

import glob
import os

import pytest
from twisted.python import usage

from fbstream import config
from fbstream.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "conf", "*.toml"))))
def test_shipped_files_load(path):
    role = os.path.basename(path)[: -len(".toml")]
    configs = config.load(role, path, [])
    assert set(configs) == set(config.ROLES if role == "all" else (role,))


@pytest.mark.parametrize("role", config.ROLES + config.OTHER_ROLES)
def test_role_files_repeat_the_defaults(role):
    """The file a newcomer reads says what the code does without it."""
    loaded = config.load(role, os.path.join(ROOT, "conf", role + ".toml"), [])[role]
    assert loaded.values == config.defaults(role)


def test_overrides():
    cfg = config.load(
        "pop", None, ["rtmp.listen=tcp:1940", "rtmp.idle_timeout=5", "record.dir=/tmp/x", "rtmp.app=5"]
    )["pop"]
    assert cfg["rtmp.listen"] == ["tcp:1940"]
    assert cfg["rtmp.idle_timeout"] == 5.0
    assert cfg["record.dir"] == "/tmp/x"
    assert cfg["rtmp.app"] == "5"
    cfg = config.load("pop", None, ['rtmp.listen=["tcp:1", "tcp:2"]'])["pop"]
    assert cfg["rtmp.listen"] == ["tcp:1", "tcp:2"]


def test_all_role_overrides_name_the_role():
    cfgs = config.load("all", None, ["encoder.rtmp.listen=tcp:2000"])
    assert cfgs["encoder"]["rtmp.listen"] == ["tcp:2000"]
    with pytest.raises(config.ConfigError, match="does not start with a role"):
        config.load("all", None, ["rtmp.listen=tcp:2000"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("rtmp.nope=1", "unknown setting 'rtmp.nope'"),
        ("rtmp.idle_timeout=soon", "must be float"),
        ("rtmp.max_message_size=1.5", "must be int"),
        ("rtmp.max_message_size=true", "must be int"),
        ("rtmp.idle_timeout=-1", "must not be negative"),
        ("noequals", "expected dotted.key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load("pop", None, [override])


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rtmp\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load("pop", str(bad), [])
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load("pop", str(tmp_path / "missing.toml"), [])
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[http]\nlisten = 8080\n")
    with pytest.raises(config.ConfigError, match=r"http\.listen must be a string or a list"):
        config.load("pop", str(wrong), [])


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_unknown_role_is_a_usage_error():
    with pytest.raises(usage.UsageError, match="unknown role 'edge'"):
        parse("--role=edge")


def test_bad_value_is_a_usage_error():
    with pytest.raises(usage.UsageError, match="must be float"):
        parse("--role=pop", "--set", "rtmp.idle_timeout=x")


def test_demo_needs_an_ingest():
    with pytest.raises(usage.UsageError, match="--demo"):
        parse("--role=origin", "--demo")


def test_plugin_is_found():
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    names = [p.tapname for p in getPlugins(IServiceMaker)]
    assert "fbstream" in names


def test_help_lists_every_setting_with_its_default():
    shown = Options().getUsage()
    for role in config.ROLES:
        for key, setting in config.SCHEMA[role].items():
            line = next((row for row in shown.splitlines() if row.startswith("  %s (" % (key,))), None)
            assert line is not None, key
            assert setting.help in line and "Default:" in line, line


def test_the_settings_classes_take_their_defaults_from_the_schema():
    from fbstream.cache.engine import CacheSettings
    from fbstream.live import hub
    from fbstream.live.rtmp import RTMPServerSettings

    assert RTMPServerSettings().idle_timeout == config.default("rtmp.idle_timeout")
    assert RTMPServerSettings().max_connections_per_address == 0  # the PoP's limit is the PoP's
    assert CacheSettings().max_fetches == config.default("cache.max_fetches")
    assert hub.DEFAULT_AUDIO_CODECS == frozenset(config.default("rtmp.audio_codecs"))
    pop = config.load("pop", None, ["rtmp.idle_timeout=7", "cache.max_bytes=1000"])["pop"]
    rtmp = config.settings(RTMPServerSettings, pop, "rtmp")
    assert (rtmp.idle_timeout, rtmp.max_connections_per_address) == (7.0, 50)
    assert config.settings(CacheSettings, pop, "cache").max_bytes == 1000
