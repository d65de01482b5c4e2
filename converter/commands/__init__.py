"""CLI commands that live in their own modules (each feature's command beside its docs).

converter/cli.py registers them with `main.add_command(...)` at its end.
"""
