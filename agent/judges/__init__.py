"""Judges score each retrieved candidate against the description, with a reason."""
