"""The feeds and subscriptions API (`/api/v1/feeds...`, `/api/v1/subscriptions...`): thin views over
`feeds.selectors` and `feeds.services`; routes in `feeds.urls`."""
