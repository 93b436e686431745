"""The market's own rules: the order book and how each venue's depth stream keeps it."""
