"""Requirements' normal form, layer keys and the installer's redaction of index credentials."""

from __future__ import annotations

from nanogrid import layers
from nanogrid.config import Settings
from nanogrid.pip import Pip


def test_requirements_are_one_canonical_text():
    assert layers.normalise("Requests[socks] >= 2.0 ; python_version >= '3'\n#x\nnumpy") == \
        'numpy\nrequests[socks]>=2.0; python_version >= "3"'
    assert layers.normalise("  \n# nothing\n") == ""


def test_the_key_follows_the_index_but_not_its_credentials_nor_the_controllers_other_settings():
    plain = Settings().replace(pip_index_url="https://mirror.example/simple/")
    secret = Settings().replace(pip_index_url="https://user:token@mirror.example/simple/")
    other = Settings().replace(pip_index_url="https://other.example/simple/")
    assert layers.layer_key("six", plain) == layers.layer_key("six", secret) != layers.layer_key("six", other)
    # The API computes it: a setting only the workers have (their image's name) is not part of it.
    assert layers.layer_key("six", plain) == layers.layer_key("six", plain.replace(runtime_image="other:1"))
    assert layers.without_credentials("https://user:token@mirror.example:8443/simple/") == \
        "https://mirror.example:8443/simple/"


def test_pip_output_never_shows_the_credentials():
    pip = Pip(Settings().replace(pip_index_url="https://user:token@mirror.example/simple/"))
    text = pip.redact("Looking in indexes: https://user:****@mirror.example/simple/\n"
                      "GET https://user:token@mirror.example/simple/six/")
    assert "token" not in text and "user" not in text, text
    # Given to pip in its environment (not its arguments, which every user of the host can read),
    # with no configuration file of the host's.
    environment = pip.environment()
    assert environment["PIP_INDEX_URL"] == "https://user:token@mirror.example/simple/"
    assert environment["PIP_CONFIG_FILE"] == "/dev/null" and "PIP_FIND_LINKS" not in environment
