import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import os

from hypothesis import settings

# HYPOTHESIS_PROFILE=thorough runs the property tests with many more examples.
settings.register_profile("default", max_examples=300)
settings.register_profile("thorough", max_examples=20000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Browsers always send Accept-Language; Flask's test client sends none, and the web app would then
# speak the community's language (German by default). The tests' clients say English, as the
# browser tests' Chromium does; a test of another language sets the header itself.
import flask.testing  # noqa: E402

_client_init = flask.testing.FlaskClient.__init__


def _english_client(self, *args, **kwargs):
    _client_init(self, *args, **kwargs)
    self.environ_base.setdefault("HTTP_ACCEPT_LANGUAGE", "en")


flask.testing.FlaskClient.__init__ = _english_client
