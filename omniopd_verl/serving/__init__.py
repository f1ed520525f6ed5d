"""Serving: the local OpenAI/Anthropic-compatible CPU teacher server (`openai_compat`). Test tools: `omniopd_verl.testing`."""
