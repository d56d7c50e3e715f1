"""Per-namespace audit chains, step 3 of 3 (schema): a position is unique within its chain, `seq` becomes
the database-assigned key that orders the whole log (no lock to take), and the old single head goes."""

from django.db import migrations, models


def seq_after_existing(apps, schema_editor):  # type: ignore[no-untyped-def]
    """PostgreSQL's new identity starts at 1; start it after the entries already there."""
    if schema_editor.connection.vendor != "postgresql":
        return
    table = apps.get_model("governance", "AuditEvent")._meta.db_table
    with schema_editor.connection.cursor() as cur:
        cur.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'seq'), "  # noqa: S608 - our own table name
            f"COALESCE((SELECT MAX(seq) FROM {table}), 0) + 1, false)"
        )


class Migration(migrations.Migration):
    dependencies = [("governance", "0005_audit_chains_data")]

    operations = [
        migrations.AlterField(
            model_name="auditevent",
            name="chain_seq",
            field=models.BigIntegerField(),
        ),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(fields=("chain", "chain_seq"), name="audit_chain_position"),
        ),
        migrations.RemoveField(model_name="auditevent", name="id"),
        migrations.AlterField(
            model_name="auditevent",
            name="seq",
            field=models.BigAutoField(primary_key=True, serialize=False),
        ),
        migrations.RunPython(seq_after_existing, migrations.RunPython.noop),
        migrations.DeleteModel(name="AuditLegacyHead"),
    ]
