"""`manage.py audit_verify`: walk every audit chain and check it against its head and the signed
anchors; exit 1 and name the first broken link."""

from __future__ import annotations

import re

from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance.audit import audit_head, audit_verify
from governance.models import AuditAnchor, AuditChainHead, AuditEvent


class Command(BaseCommand):
    help = (
        "Verify the audit log: every chain's hashes, its head, and every signed anchor; exits non-zero "
        "and prints the first broken link on tampering."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--anchor",
            help="CHAIN:SEQ:HASH published earlier (see --print-head): entry SEQ of CHAIN must still "
            "carry HASH, which catches a chain rewritten wholesale before the next signed anchor.",
        )
        parser.add_argument("--chain", help="Verify this chain only (e.g. ns/<namespace id>).")
        parser.add_argument(
            "--print-head",
            action="store_true",
            help="Also print the log's tree head as ENTRIES:ROOT and each chain's head as CHAIN:SEQ:HASH.",
        )

    def handle(self, *args: object, **options: object) -> None:
        anchor = None
        raw = options.get("anchor")
        if raw:
            match = re.fullmatch(r"(.+):(\d+):([0-9a-f]{64})", str(raw))
            if not match:
                raise CommandError("--anchor takes CHAIN:SEQ:HASH, e.g. ns/<id>:42:3f1c...(64 hex digits).")
            anchor = (match.group(1), int(match.group(2)), match.group(3))
        chain = str(options["chain"]) if options.get("chain") else None
        broken = audit_verify(anchor=anchor, chain=chain)
        if broken is not None:
            if not broken.chain:
                raise CommandError(f"Audit log broken: {broken.problem}")
            raise CommandError(
                f"Audit log broken at chain {broken.chain}, entry {broken.seq}: {broken.problem}"
            )
        events = AuditEvent.objects.filter(**({"chain": chain} if chain else {}))
        chains = events.values("chain").distinct().count()
        self.stdout.write(
            f"Audit log intact: {events.count()} entries in {chains} chains verified, "
            f"{AuditAnchor.objects.count()} signed anchors verified."
        )
        if options.get("print_head"):
            entries, root = audit_head()
            self.stdout.write(f"{entries}:{root}")
            heads = AuditChainHead.objects.filter(**({"chain": chain} if chain else {})).order_by("chain")
            for head in heads:
                self.stdout.write(f"{head.chain}:{head.seq}:{head.hash}")
