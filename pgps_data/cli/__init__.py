"""The data-side commands: pgps-synth, pgps-convert, pgps-inspect (one module each)."""
