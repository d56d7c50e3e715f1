from django.contrib import admin

from marketplace.models import Installation, Pack, PackRelease, Publisher


@admin.register(Publisher)
class PublisherAdmin(admin.ModelAdmin):
    list_display = ("slug", "display_name", "organization")


@admin.register(Pack)
class PackAdmin(admin.ModelAdmin):
    list_display = ("slug", "publisher", "title", "price_cents", "listed")


@admin.register(PackRelease)
class PackReleaseAdmin(admin.ModelAdmin):
    list_display = ("pack", "version", "manifest_sha256", "created_at")
    readonly_fields = ("manifest", "manifest_sha256")  # releases are immutable


@admin.register(Installation)
class InstallationAdmin(admin.ModelAdmin):
    list_display = ("release", "user", "namespace", "created_at")
