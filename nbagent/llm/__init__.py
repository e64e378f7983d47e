"""Chat model clients over httpx: OpenAI-compatible and Anthropic."""
