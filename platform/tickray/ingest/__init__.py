"""The batch side of getting data in: files found, read by their vendor's reader, validated and landed in the lake."""
