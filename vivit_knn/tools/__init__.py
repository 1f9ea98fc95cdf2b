"""Command-line tools on models and trained runs: stats, attention, k sweep, export."""
