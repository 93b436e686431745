"""What every model consumer reads: rows (features, validity, labels) and their splits."""
