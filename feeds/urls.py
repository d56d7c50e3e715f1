"""`/api/v1/feeds/...` and `/api/v1/subscriptions/...` (included at the root of `api/v1/`)."""

from django.urls import path

from feeds.apis import feeds, subscriptions
from feeds.apis.events import FeedEventsApi

SUB = "subscriptions/<uuid:subscription_id>"

urlpatterns = [
    # feeds
    path("feeds", feeds.FeedListApi.as_view(), name="feeds"),
    path("feeds/<uuid:feed_id>", feeds.FeedDetailApi.as_view(), name="feed"),
    path("feeds/<uuid:feed_id>/entries", feeds.FeedEntriesApi.as_view(), name="feed-entries"),
    path("feeds/<uuid:feed_id>/events", FeedEventsApi.as_view(), name="feed-events"),
    path("feeds/<uuid:feed_id>/memories", feeds.FeedMemoriesApi.as_view(), name="feed-memories"),
    path("feeds/<uuid:feed_id>/retractions", feeds.FeedRetractionsApi.as_view(), name="feed-retractions"),
    # subscriptions
    path("subscriptions", subscriptions.SubscriptionListApi.as_view(), name="subscriptions"),
    path(SUB, subscriptions.SubscriptionDetailApi.as_view(), name="subscription"),
    path(f"{SUB}/pause", subscriptions.SubscriptionPauseApi.as_view(), name="subscription-pause"),
    path(f"{SUB}/resume", subscriptions.SubscriptionResumeApi.as_view(), name="subscription-resume"),
    path(
        f"{SUB}/rotate-secret",
        subscriptions.SubscriptionRotateSecretApi.as_view(),
        name="subscription-rotate-secret",
    ),
    path(f"{SUB}/deliveries", subscriptions.DeliveryListApi.as_view(), name="subscription-deliveries"),
    path(
        f"{SUB}/deliveries/<uuid:delivery_id>",
        subscriptions.DeliveryDetailApi.as_view(),
        name="subscription-delivery",
    ),
    path(
        f"{SUB}/deliveries/<uuid:delivery_id>/retry",
        subscriptions.DeliveryRetryApi.as_view(),
        name="subscription-delivery-retry",
    ),
    path(f"{SUB}/dead-letters", subscriptions.DeadLetterListApi.as_view(), name="subscription-dead-letters"),
]
