"""Serving helpers: a local OpenAI/Anthropic-compatible teacher server (`openai_compat`)."""
