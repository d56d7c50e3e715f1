"""The marketplace API (`/api/v1/marketplace/...`), a module per area; `urls.py` joins their routes."""
