"""Forced alignment: manifest -> word, phone (and character) intervals + silence spans. See docs/align.md."""
