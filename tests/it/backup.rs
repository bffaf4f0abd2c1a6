//! Online backup and restore (issue 14): filled in by its author.
