"""Helpers shipped for tests and local development (sample images, tiny media servers)."""
