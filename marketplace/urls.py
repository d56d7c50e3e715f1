"""`/api/v1/marketplace/...`: each area's module owns its routes."""

from marketplace.apis import catalog, installs, licences, payments, releases, studio

urlpatterns = [
    *studio.urlpatterns,
    *releases.urlpatterns,
    *catalog.urlpatterns,
    *licences.urlpatterns,
    *payments.urlpatterns,
    *installs.urlpatterns,
]
