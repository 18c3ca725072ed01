"""Microbenchmarks that print a ratio to the floor measured in the same run (`python -m epd.bench.<name>`)."""
