"""Print a new API token for a user (shown once; only its hash is stored)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.models import ALL_SCOPES, User
from accounts.services import api_token_create
from core.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--scope", action="append", dest="scopes", choices=ALL_SCOPES)

    def handle(self, *args: Any, **opts: Any) -> None:
        user = User.objects.filter(username=opts["username"]).first()
        if user is None:
            raise CommandError(f"No user '{opts['username']}'.")
        try:
            _, raw = api_token_create(user=user, name=str(opts["name"]), scopes=opts["scopes"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(raw)
