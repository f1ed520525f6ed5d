"""The demonstrations: `python -m omniopd_verl.demo` (`make demo`, quickstart.py: two arms, one
pre-declared metric, a CI) and `python -m omniopd_verl.demo.experiment` (`make experiment`: the paper's
comparison at small scale). Both drive the local engine with the steered demonstration teacher
(teachers/steering.py); nothing else in the package imports this room.
"""
