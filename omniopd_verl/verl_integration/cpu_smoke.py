"""Old path of omniopd_verl.verl_integration.cpu.smoke, kept while cli/train.py still imports it by this name.

New code imports omniopd_verl.verl_integration.cpu.smoke; tests/test_layering.py allows this path only
from cli/. Delete it once cli/train.py imports the new path.
"""

import sys

from omniopd_verl.verl_integration.cpu import smoke as _module

sys.modules[__name__] = _module
