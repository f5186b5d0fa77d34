"""Media helpers: fetching (SSRF guard), probing, output geometry, encoding and muxing."""
