"""`manage.py audit_verify`: walk the hash-chained audit log; exit 1 and name the first broken link."""

from __future__ import annotations

import re

from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance.audit import audit_head, audit_verify
from governance.models import AuditEvent


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exits non-zero and prints the first broken link on tampering."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--anchor",
            help="SEQ:HASH published earlier (see --print-head): the entry at SEQ "
            "must still carry HASH, which catches a chain rewritten wholesale.",
        )
        parser.add_argument("--print-head", action="store_true", help="Also print the head as SEQ:HASH.")

    def handle(self, *args: object, **options: object) -> None:
        anchor = None
        raw = options.get("anchor")
        if raw:
            match = re.fullmatch(r"(\d+):([0-9a-f]{64})", str(raw))
            if not match:
                raise CommandError("--anchor takes SEQ:HASH, e.g. 42:3f1c...(64 hex digits).")
            anchor = (int(match.group(1)), match.group(2))
        broken = audit_verify(anchor=anchor)
        if broken is not None:
            raise CommandError(f"Audit chain broken at entry {broken.seq}: {broken.problem}")
        seq, digest = audit_head()
        self.stdout.write(f"Audit chain intact: {AuditEvent.objects.count()} entries verified.")
        if options.get("print_head"):
            self.stdout.write(f"{seq}:{digest}")
