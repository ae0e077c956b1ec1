"""Near-duplicate detection with exact rouge-score ROUGE-L semantics; no I/O, no asyncio."""
