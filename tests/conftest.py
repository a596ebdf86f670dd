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
