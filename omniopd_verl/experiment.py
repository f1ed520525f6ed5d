"""`python -m omniopd_verl.experiment`: kept because users type it; the experiment lives in
omniopd_verl/demo/experiment.py (`python -m omniopd_verl.demo.experiment`)."""

import sys

if __name__ == "__main__":
    from omniopd_verl.demo.experiment import main

    sys.exit(main())
