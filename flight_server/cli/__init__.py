"""The `flight-server` command and its subcommands."""
