"""Completion: when a study is ready (the pure rule), the monitor that applies it, and routing rules."""
