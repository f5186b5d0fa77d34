"""Engines make videos. They import only domain, catalog, errors, media and storage."""
