"""`selfinstruct generate`: the pipeline, its seams, supply, stages, records, resume, orchestration."""
