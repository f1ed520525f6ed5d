"""OmniOPD inside stock verl 0.9.1: no fork, no monkeypatch (docs/verl.md explains how the pieces fit).

- `plugin`: the `verl.plugins` entry point (estimator + reward manager registrations, loud self-check);
- `estimator`: the `omniopd` advantage estimator (a thin wrapper over `omniopd_verl.advantage`);
- `agent_loop`: the `omniopd_agent` loop (student log-probs and rollout top-k entropies);
- `reward_manager`: the `omniopd` reward manager (runs the Auditor against the teacher);
- `checks`: validation of a composed verl config that runs OmniOPD.
Importing this package imports nothing from verl; the submodules do.
"""
