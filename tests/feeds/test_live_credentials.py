"""A live follower's stream outlives neither its token nor its user: the periodic re-check that stops a
follower whose licence ended also stops one whose token was revoked or expired, or whose user was
deactivated."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken
from feeds.live import viewer_open, viewer_still_reads
from governance.policy import Subject

pytestmark = pytest.mark.django_db


def token_viewer(feed_world):  # type: ignore[no-untyped-def]
    token, _ = account_services.api_token_create(user=feed_world.subscriber, name="agent", scopes=["feeds"])
    actor = Subject(user=feed_world.subscriber, scopes=frozenset(["feeds"]), token_id=token.pk)
    viewer = viewer_open(actor=actor, feed_id=feed_world.feed.pk)
    assert viewer is not None and viewer_still_reads(viewer)
    return token, viewer


def test_a_revoked_token_stops_its_followers(feed_world):
    token, viewer = token_viewer(feed_world)
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert not viewer_still_reads(viewer)


def test_an_expired_token_stops_its_followers(feed_world):
    token, viewer = token_viewer(feed_world)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not viewer_still_reads(viewer)


def test_a_deactivated_user_stops_their_session_followers(feed_world):
    viewer = viewer_open(actor=Subject(user=feed_world.subscriber), feed_id=feed_world.feed.pk)
    assert viewer is not None and viewer_still_reads(viewer)
    type(feed_world.subscriber).objects.filter(pk=feed_world.subscriber.pk).update(is_active=False)
    assert not viewer_still_reads(viewer)
