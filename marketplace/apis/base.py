"""What every marketplace endpoint shares."""

from __future__ import annotations

from rest_framework.views import APIView

from accounts.models import TokenScope
from accounts.scopes import SCOPED_PERMISSIONS


class MarketplaceApi(APIView):
    """Every marketplace endpoint needs the `marketplace` scope (services check it again)."""

    permission_classes = SCOPED_PERMISSIONS
    required_scope = TokenScope.MARKETPLACE.value
