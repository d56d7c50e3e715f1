"""Per-namespace audit chains, step 2 of 3 (data): the entries written before chains existed become the
`legacy` chain, unchanged (their hashes were computed over their position in it), and the old head
becomes that chain's head. New entries go to per-namespace chains."""

from django.db import migrations
from django.db.models import F


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    AuditEvent = apps.get_model("governance", "AuditEvent")
    AuditLegacyHead = apps.get_model("governance", "AuditLegacyHead")
    AuditChainHead = apps.get_model("governance", "AuditChainHead")
    AuditEvent.objects.filter(chain_seq__isnull=True).update(chain="legacy", chain_seq=F("seq"))
    old = AuditLegacyHead.objects.filter(pk=1).first()
    if old is not None and old.seq:
        AuditChainHead.objects.update_or_create(chain="legacy", defaults={"seq": old.seq, "hash": old.hash})


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    AuditLegacyHead = apps.get_model("governance", "AuditLegacyHead")
    AuditChainHead = apps.get_model("governance", "AuditChainHead")
    head = AuditChainHead.objects.filter(chain="legacy").first()
    if head is not None:
        AuditLegacyHead.objects.update_or_create(pk=1, defaults={"seq": head.seq, "hash": head.hash})


class Migration(migrations.Migration):
    dependencies = [("governance", "0004_audit_chains_schema")]

    operations = [migrations.RunPython(forwards, backwards)]
