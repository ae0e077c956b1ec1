"""The run directory: append-only store, seed tasks, invariants (verify), export formats."""
