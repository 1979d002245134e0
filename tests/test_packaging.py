"""What pip installs: every subpackage is listed, and the plugin ships without __init__.py."""

import configparser
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_subpackage_is_installed():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    listed = {p.strip() for p in parser["options"]["packages"].split() if p.strip()}
    found = set()
    for directory, _, files in os.walk(os.path.join(ROOT, "fbstream")):
        if "__init__.py" in files:
            found.add(os.path.relpath(directory, ROOT).replace(os.sep, "."))
    assert found <= listed, "add to setup.cfg packages: %s" % (sorted(found - listed),)
    assert "twisted.plugins" in listed


def test_no_plugins_init():
    assert not os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py"))
