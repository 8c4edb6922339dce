"""The terminal: the Typer commands, the REPL, rich rendering; thin layers over the workers."""
