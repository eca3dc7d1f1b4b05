"""Readers that turn public datasets (local copies) into mstools case folders."""
