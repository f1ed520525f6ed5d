"""The built-in offline SmolLM2: converted once, real weights, and a tokenizer whose eos ends a turn."""

import torch

from omniopd_verl.runtime.models import load_causal_lm


def test_builtin_smollm2_loads_and_stops_at_end_of_turn(smollm2_path):
    model, tok = load_causal_lm(smollm2_path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # the chat template closes every turn with the eos token (the GGUF metadata got this wrong)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False
    )
    assert "hello" + tok.eos_token in rendered
    assert tok.pad_token_id == tok.eos_token_id
    # a short greedy answer ends with eos well before the limit: generation does stop
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3? Answer briefly."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert tok.eos_token_id in new and len(new) < 48
    assert "5" in tok.decode(new)
