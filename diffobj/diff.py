"""The differ's pipeline: read -> correlate -> compare -> include -> special sections -> output."""
