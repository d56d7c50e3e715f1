"""Sample files for the studio tests, generated in code (no binary fixtures): PDFs, adapters, images."""
