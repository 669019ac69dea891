"""What runs report: one run's results section, tables, plot and summaries (`run_report`), and the
leaderboard across runs with its gates and HTML page."""
