from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from accounts.models import ApiToken, Invitation, Membership, Namespace, NamespaceJoin, Organization, User

admin.site.register(User, UserAdmin)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "created_at")
    inlines = [MembershipInline]


@admin.register(Namespace)
class NamespaceAdmin(admin.ModelAdmin):
    list_display = ("key", "kind", "owner_user", "organization", "created_at")
    list_filter = ("kind",)
    search_fields = ("key",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at")
    readonly_fields = ("key_sha256", "prefix", "parent")


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("organization", "invitee", "role", "status", "invited_by", "created_at", "responded_at")
    list_filter = ("status", "role")


@admin.register(NamespaceJoin)
class NamespaceJoinAdmin(admin.ModelAdmin):
    list_display = ("namespace", "user", "created_at")
    search_fields = ("namespace__key", "user__username")
