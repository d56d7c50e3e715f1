"""Feeds and subscriptions (MemStore publish/subscribe) on one delivery engine.

A publisher feed per pack is a durable, ordered, signed log (`FeedEntry`, `seq` per feed); subscriptions
keep cursors; every entry reaches each subscriber's destinations (its vault, its webhook; MIP peers
later) through the outbox in `feeds.delivery`. See docs/feeds/.
"""
