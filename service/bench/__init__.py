"""`selfinstruct bench`: load tests through the same client and limiter as generate."""
