"""Pipeline stages: one module a stage."""
