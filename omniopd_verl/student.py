"""Old path of omniopd_verl.runtime.scoring, kept while cli/ and docs/audit.md still import it by this name.

New code imports omniopd_verl.runtime.scoring; tests/test_layering.py allows this path only from cli/. Delete it
once those import the new path. The alias makes both names one module (one set of globals to patch).
"""

import sys

from omniopd_verl.runtime import scoring as _module

sys.modules[__name__] = _module
