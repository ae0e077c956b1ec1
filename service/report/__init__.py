"""`selfinstruct report`: a run directory's numbers (summary.json) and an HTML page."""
