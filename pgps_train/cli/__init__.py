"""The training-side commands: pgps-train, pgps-predict, pgps-evaluate, pgps-compare, pgps-schedule."""
