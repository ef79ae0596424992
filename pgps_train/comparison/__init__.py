"""The pgps-compare instrument: runs, statistics and reports of mode comparisons."""
