"""`python -m omniopd_verl.demo`: the demo (quickstart.py)."""

import sys

from omniopd_verl.demo.quickstart import main

sys.exit(main())
