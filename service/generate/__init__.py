"""`selfinstruct generate`: the pipeline, its stages and filters, admission, orchestration."""
