"""One module a CLI command: add_arguments(parser) and run(args) -> int."""
