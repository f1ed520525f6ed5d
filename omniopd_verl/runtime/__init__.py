"""The Hugging Face model runtime: everything that loads, samples from or scores a transformers causal LM.

- `models`: where models come from (the shipped offline SmolLM2, local paths, tiny random test models)
  and how they are loaded (`load_causal_lm`, with the CPU tuning below);
- `generation`: the project's one sampling loop (`sample_continuations`) and prefix scoring
  (`score_continuations`, `continuation_distributions`), plus the EOS-id and pad-token helpers;
- `scoring`: teacher-forced scoring of finished (prompt, response) pairs: exact entropies and log-probs;
- `decode_attention`, `cpu_allocator`: CPU speed (copy-free GQA decode attention, glibc malloc tuning).

Every engine, teacher and command that runs a local model goes through here; nothing here knows about
OmniOPD's audit, the engines or verl (it imports `core.seeds` and `errors` only).
"""
