"""`selfinstruct serve`: the HTTP job API, job state on disk, Prometheus metrics, JSON logs."""
