"""Old path of omniopd_verl.runtime.models, kept while cli/ and docs/audit.md still import it by this name.

New code imports omniopd_verl.runtime.models; tests/test_layering.py allows this path only from cli/. Delete it
once those import the new path. The alias makes both names one module (one set of globals to patch).
"""

import sys

from omniopd_verl.runtime import models as _module

sys.modules[__name__] = _module
