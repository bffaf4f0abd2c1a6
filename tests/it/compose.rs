//! Compose deployment with real containers (issue 14): filled in by its author.
