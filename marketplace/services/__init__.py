"""Marketplace writes, a module per idea. The names most callers need are re-exported here."""

from marketplace.services.installs import pack_install
from marketplace.services.releases import release_publish
from marketplace.services.studio import pack_add_memories, pack_create, publisher_create

__all__ = ["pack_add_memories", "pack_create", "pack_install", "publisher_create", "release_publish"]
