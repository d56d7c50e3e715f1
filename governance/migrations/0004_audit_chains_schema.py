"""Per-namespace audit chains and signed anchors, step 1 of 3 (schema, additive): the chain columns,
one head row per chain and the anchor table. The old single head is kept aside until step 2 copies it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0003_pii_reports_and_watermark_keys"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="chain",
            field=models.CharField(default="legacy", max_length=80),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="chain_seq",
            field=models.BigIntegerField(null=True),
        ),
        migrations.RenameModel(old_name="AuditChainHead", new_name="AuditLegacyHead"),
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                ("chain", models.CharField(max_length=80, primary_key=True, serialize=False)),
                ("seq", models.BigIntegerField(default=0)),
                (
                    "hash",
                    models.CharField(
                        default="0000000000000000000000000000000000000000000000000000000000000000",
                        max_length=64,
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="AuditAnchor",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField()),
                ("chains", models.PositiveIntegerField()),
                ("entries", models.BigIntegerField()),
                ("heads", models.JSONField(default=list)),
                ("root", models.CharField(max_length=64)),
                ("prev_digest", models.CharField(blank=True, max_length=64, unique=True)),
                ("digest", models.CharField(max_length=64, unique=True)),
                ("key_id", models.CharField(max_length=64)),
                ("public_key", models.CharField(max_length=64)),
                ("signature", models.CharField(max_length=128)),
            ],
            options={"ordering": ["id"]},
        ),
    ]
