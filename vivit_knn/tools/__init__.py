"""Command-line tools that inspect models (parameter and FLOP counts)."""
