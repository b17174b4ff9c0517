"""One module per `utnet` subcommand (see utnet/cli.py for the contract)."""
