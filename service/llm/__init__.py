"""OpenAI-compatible client: rate limits, retries, accounting."""
